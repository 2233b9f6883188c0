"""Unpadded prefill's backend choice on the GPU (eet_hf/ops/prefill_backend.py): flash while a shape is new, cuDNN
once it has repeated past the rent-or-buy threshold, the same attention either way, and a CUDA graph captured
after the switch replays the cuDNN kernel."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from eet_hf.ops import prefill_backend as pb

SHAPE = (8, 16, 2048, 128)  # 275 GFLOP per call non-causal: the threshold is ~120 calls


def _kernel_names(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.fixture
def fresh_counts(monkeypatch):
    pb.reset()
    yield
    pb.reset()


@pytest.mark.skipif(not torch.backends.cuda.cudnn_sdp_enabled(), reason="torch's cuDNN SDPA backend is disabled")
def test_repeated_shape_moves_from_flash_to_cudnn_with_the_same_result(cuda_ops, fresh_counts):
    torch.manual_seed(0)
    q, k, v = (torch.randn(SHAPE, device="cuda", dtype=torch.float16) for _ in range(3))
    bounds = [torch.zeros(SHAPE[0], dtype=torch.int32, device="cuda"),
              torch.full((SHAPE[0],), SHAPE[2], dtype=torch.int32, device="cuda"),
              torch.zeros(SHAPE[0], dtype=torch.int32, device="cuda")]

    def call():
        return cuda_ops.attention(q, k, v, *bounds, False, SHAPE[3] ** -0.5, padded=False)

    threshold = pb.calls_before_cudnn(q, k, False)
    assert threshold is not None and 10 < threshold < 1000, threshold
    first = _kernel_names(call)
    assert any("flash" in n.lower() for n in first) and not any("cudnn" in n.lower() for n in first), first
    flash_out = call().float()
    for _ in range(threshold - 2):
        call()
    switched = _kernel_names(call)
    assert any("cudnn" in n.lower() for n in switched), switched
    cudnn_out = call().float()
    want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double()).transpose(1, 2)
    for got in (flash_out, cudnn_out):
        assert (got - want).abs().max().item() < 2e-3

    # A graph captured now replays cuDNN (its plan was built eagerly above).
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        captured = call()
    replayed = _kernel_names(graph.replay)
    assert any("cudnn" in n.lower() for n in replayed), replayed
    assert torch.equal(captured, call())
