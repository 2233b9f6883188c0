"""Prompts under CUDA graphs (eet_hf/engine/prefill_graphs.py): which prompts may take a graph, and the bookkeeping
(first use eager, second use captures, later uses replay, a failed capture stays eager, an LRU bound), with the
capture faked so it runs on CPU. Real captures: tests/gpu/test_prefill_graphs_cuda.py."""

from __future__ import annotations

import pytest
import torch

from eet_hf.engine import prefill_graphs as P


def test_only_cuda_prompts_within_the_token_bound_take_graphs():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert P._graphable(2, 100, cuda) and not P._graphable(2, 100, cpu)
    assert not P._graphable(1, 1, cuda)  # a one-token prompt is a decode-shaped forward
    assert P._graphable(1, P.MAX_GRAPH_TOKENS, cuda) and not P._graphable(2, P.MAX_GRAPH_TOKENS // 2 + 1, cuda)


class _View:
    """A DecodeModel stand-in: counts eager forwards, returns a marker."""

    def __init__(self):
        self.eager = 0
        self.dtype = torch.float32

    def forward_last_logits(self, tokens, positions, kv, bounds, padded=True):
        self.eager += 1
        return torch.full((tokens.shape[0], 3), float(self.eager))


class _FakeCaptured:
    def __init__(self, batch):
        self.replays, self.loaded = 0, None
        self.logits = torch.full((batch, 3), -1.0)
        self.graph = self

    def load(self, tokens, positions, pads):
        self.loaded = tokens.clone()

    def replay(self):
        self.replays += 1


@pytest.fixture
def graphs(monkeypatch):
    monkeypatch.setattr(P, "_graphable", lambda batch, seq, device: seq > 1)
    made = []

    def capture(self, w, key, tokens, positions, pads, kv, padded):
        if tokens.shape[1] == 13:  # a prompt whose capture fails
            self._remember(key, False)
            return False
        made.append(_FakeCaptured(tokens.shape[0]))
        self._remember(key, made[-1])
        return made[-1]

    monkeypatch.setattr(P.PrefillGraphs, "_capture", capture)
    # The first, eager use runs on the capture stream (so the capture's cuBLAS workspace is made then): recorded here.
    prefill = P.PrefillGraphs()
    prefill.side_stream_runs = []
    monkeypatch.setattr(P, "on_side_stream", lambda fn, device: (prefill.side_stream_runs.append(device), fn())[1])
    return prefill, made


_KV = torch.zeros(4)  # the engine's arena view: one tensor across calls (its address is part of the key)


def _call(g, w, batch, seq, fill=1):
    tokens = torch.full((batch, seq), fill)
    return g.forward(w, tokens, tokens, torch.zeros(batch, dtype=torch.int32), _KV, padded=False)


def test_first_use_is_eager_the_second_captures_then_replays(graphs):
    g, made = graphs
    w = _View()
    assert _call(g, w, 2, 10)[0, 0] == 1.0 and w.eager == 1 and not made
    assert len(g.side_stream_runs) == 1  # the eager first use ran on the capture stream
    assert _call(g, w, 2, 10, fill=5)[0, 0] == -1.0 and len(made) == 1 and made[0].replays == 1
    assert torch.equal(made[0].loaded, torch.full((2, 10), 5))  # the replay read this call's tokens
    _call(g, w, 2, 10)
    assert w.eager == 1 and made[0].replays == 2 and len(made) == 1
    _call(g, w, 2, 11)  # another length: its own first, eager use
    assert w.eager == 2 and len(made) == 1


def test_a_failed_capture_keeps_that_prompt_eager(graphs):
    g, made = graphs
    w = _View()
    for _ in range(4):
        _call(g, w, 1, 13)
    assert w.eager == 4 and not made


def test_graphs_are_bounded_and_cleared(graphs):
    g, made = graphs
    w = _View()
    for seq in range(2, 2 + 3 * P.MAX_GRAPHS):
        _call(g, w, 1, seq)
        _call(g, w, 1, seq)
    assert len(g._graphs) <= 2 * P.MAX_GRAPHS
    g.clear()
    assert not g._graphs
    _call(g, w, 1, 2)
    assert made[0].replays == 1  # after clear() the old graph is not replayed: the length starts over, eagerly
