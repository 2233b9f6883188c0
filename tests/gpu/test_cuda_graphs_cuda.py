"""eet_hf.cuda_graphs: every eet capture warms up and captures on one side stream per device, so captures do not
each leave a cuBLAS workspace behind (32 MiB per stream on Hopper), and a captured graph replays its call."""

from __future__ import annotations

import torch

from eet_hf.cuda_graphs import side_stream, warm_up_and_capture


def test_side_stream_is_one_stream_per_device():
    first = side_stream()
    assert side_stream() is first
    assert side_stream("cuda") is first
    assert side_stream(torch.device("cuda", torch.cuda.current_device())) is first
    assert first != torch.cuda.current_stream()  # a capture cannot run on the default stream


def test_warm_up_runs_once_eagerly_then_the_graph_replays_the_call():
    a = torch.randn(64, 96, device="cuda", dtype=torch.float16)
    b = torch.randn(96, 80, device="cuda", dtype=torch.float16)
    eager_runs = []

    def fn():
        eager_runs.append(torch.cuda.is_current_stream_capturing())
        return a @ b

    graph = torch.cuda.CUDAGraph()
    out = warm_up_and_capture(graph, fn, torch.cuda.graph_pool_handle())
    assert eager_runs == [False, True]  # one eager warm-up, then the capture
    for _ in range(3):  # fresh inputs each time, the output poisoned before the replay
        a.copy_(torch.randn_like(a))
        b.copy_(torch.randn_like(b))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out, a @ b)


def test_captures_of_new_shapes_do_not_add_cublas_workspaces():
    pool = torch.cuda.graph_pool_handle()
    graphs = []

    def capture(rows: int) -> None:
        a = torch.randn(rows, 256, device="cuda", dtype=torch.float16)
        b = torch.randn(256, 256, device="cuda", dtype=torch.float16)
        graph = torch.cuda.CUDAGraph()
        out = warm_up_and_capture(graph, lambda: a @ b, pool)
        graphs.append((graph, a, b, out))

    capture(64)  # the first capture may create eet's stream and its workspace
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for rows in (96, 128, 160, 192):
        capture(rows)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    # Four captures' inputs and outputs are ~0.6 MiB; one more cuBLAS workspace would be at least 4 MiB (torch's
    # default CUBLAS_WORKSPACE_CONFIG), 32 MiB on Hopper.
    assert grown < 4 * 2**20, f"captures allocated {grown / 2**20:.1f} MiB: a workspace per capture stream?"
