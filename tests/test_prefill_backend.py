"""The rent-or-buy choice between flash and cuDNN for unpadded prefill (eet_hf/ops/prefill_backend.py)."""

from __future__ import annotations

import pytest
import torch

from eet_hf.ops import prefill_backend as pb


def _qk(batch=32, heads=12, tokens=2048, head_dim=64, dtype=torch.float16):
    q = torch.empty(batch, heads, tokens, head_dim, dtype=dtype, device="meta")
    return q, q


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    pb.reset()
    yield
    pb.reset()


def test_threshold_is_the_plan_cost_over_the_estimated_saving():
    # BERT batch 32, 12 heads, 2048 tokens, non-causal: 4 * 32 * 12 * 2048^2 * 64 flops.
    flops = 4 * 32 * 12 * 2048 * 2048 * 64
    saving_ms = pb.CUDNN_SAVING * flops / (pb.FLASH_TFLOPS * 1e12) * 1e3
    assert pb.calls_before_cudnn(*_qk(), causal=False) == -(-pb.CUDNN_PLAN_MS // saving_ms)
    # Half the work when causal: about twice the calls.
    causal = pb.calls_before_cudnn(*_qk(), causal=True)
    assert abs(causal - 2 * pb.calls_before_cudnn(*_qk(), causal=False)) <= 1


@pytest.mark.parametrize(
    "shape",
    [dict(dtype=torch.float32), dict(head_dim=80), dict(head_dim=256), dict(tokens=pb.CUDNN_MIN_TOKENS - 1)],
    ids=["fp32", "d80", "d256", "short"],
)
def test_shapes_where_cudnn_did_not_win_never_switch(shape):
    q, k = _qk(**shape)
    assert pb.calls_before_cudnn(q, k, True) is None
    assert {pb.first_backend(q, k, True) for _ in range(2000)} == {"FLASH_ATTENTION"}


@pytest.mark.parametrize("causal, qualifies", [(True, False), (False, True)])
def test_minimum_length_depends_on_causality(causal, qualifies):
    # 128 tokens: cuDNN won bidirectional (BERT) shapes on the H200 and lost the causal (GPT-2) one.
    q, k = _qk(tokens=pb.CUDNN_MIN_TOKENS_BIDIRECTIONAL)
    assert (pb.calls_before_cudnn(q, k, causal) is not None) == qualifies
    short_q, short_k = _qk(tokens=pb.CUDNN_MIN_TOKENS_BIDIRECTIONAL - 1)
    assert pb.calls_before_cudnn(short_q, short_k, False) is None


def test_flash_until_the_threshold_then_cudnn_per_shape():
    q, k = _qk()
    n = pb.calls_before_cudnn(q, k, False)
    got = [pb.first_backend(q, k, False) for _ in range(n + 3)]
    assert got == ["FLASH_ATTENTION"] * n + ["CUDNN_ATTENTION"] * 3
    other_q, other_k = _qk(tokens=2047)  # a new length counts from zero
    assert pb.first_backend(other_q, other_k, False) == "FLASH_ATTENTION"
    assert pb.first_backend(q, k, True) == "FLASH_ATTENTION"  # causal is another shape


def test_capture_switches_only_shapes_planned_outside_it(monkeypatch):
    q, k = _qk()
    n = pb.calls_before_cudnn(q, k, False)
    other_q, other_k = _qk(batch=16)
    for _ in range(n + 1):
        pb.first_backend(q, k, False)  # planned eagerly
    for _ in range(pb.calls_before_cudnn(other_q, other_k, False) - 1):
        pb.first_backend(other_q, other_k, False)  # one call short
    monkeypatch.setattr(pb, "_capturing", lambda q: True)
    assert pb.first_backend(q, k, False) == "CUDNN_ATTENTION"
    assert [pb.first_backend(other_q, other_k, False) for _ in range(3)] == ["FLASH_ATTENTION"] * 3


def test_compiling_overrides_the_counts(monkeypatch):
    q, k = _qk()
    for _ in range(pb.calls_before_cudnn(q, k, False) + 1):
        pb.first_backend(q, k, False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert pb.first_backend(q, k, False) == "FLASH_ATTENTION"


def test_tracked_shapes_are_bounded(monkeypatch):
    monkeypatch.setattr(pb, "MAX_TRACKED_SHAPES", 8)
    for tokens in range(2048, 2048 + 20):
        pb.first_backend(*_qk(tokens=tokens), causal=True)
    assert len(pb._calls) <= 8
