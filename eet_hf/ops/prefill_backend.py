"""Which torch SDPA backend unpadded square prefill tries first (eet_hf.ops.attention with padded=False).

Measured on the H200 (torch 2.11+cu130, cuDNN 9.19):
- at steady state (kernels-h200.md, CUDA-graph replays) cuDNN takes about 0.7x flash's time from 512 tokens on, in
  every class measured (GPT-2 and BERT shapes at head_dim 64, a head_dim-128 class; fp16 and bf16); at 128 tokens
  it is faster for bidirectional attention (0.78x at BERT-base batch 32, 0.94x at BERT-large batch 32) and not for
  causal (1.02x at GPT-2 batch 8), so the minimum length depends on causality;
- but its first call at each new shape builds an execution plan, 37-71 ms, where flash's first call takes
  0.05-1.6 ms (sdpa-first-call-h200.md): cuDNN repays that after 77 (BERT batch
  32, 2048 tokens) to ~1500 calls of one shape at 2048 tokens, and after thousands at 512.

So the choice is a rent-or-buy one, made per exact shape: flash until the shape has run often enough that the time
cuDNN would have saved equals its plan cost (estimated from the work), then cuDNN. A generate() over prompts of
varied lengths stays on flash and never pays a plan; a loop over one shape (a fixed-length encoder, a benchmark)
moves to cuDNN after a bounded number of calls, having paid at most about twice the best choice in hindsight.
Only shapes where cuDNN won at steady state qualify: 16-bit, head_dim 64 or 128, at least CUDNN_MIN_TOKENS
(causal) or CUDNN_MIN_TOKENS_BIDIRECTIONAL tokens.

Inside CUDA-graph capture a shape switches only if its cuDNN plan was already built outside the capture (a plan
build during capture is not something to rely on); under torch.compile nothing is counted and flash is used.
"""

from __future__ import annotations

import math

import torch

USUAL_ORDER = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")

CUDNN_PLAN_MS = 40.0  # typical first-call cost at a new shape (37-71 ms measured)
FLASH_TFLOPS = 250.0  # flash's rate on these shapes (163-294 TFLOP/s measured at 2048 tokens)
CUDNN_SAVING = 0.3  # share of flash's time cuDNN saves where it qualifies (0.28-0.43 measured, 512-2048 tokens)
CUDNN_MIN_TOKENS = 512  # causal, shorter: cuDNN not faster (GPT-2 batch 8 at 128 tokens: 1.02x flash's time)
CUDNN_MIN_TOKENS_BIDIRECTIONAL = 128  # non-causal: faster from 128 tokens (BERT base / large batch 32: 0.78x / 0.94x)
MAX_TRACKED_SHAPES = 4096  # the call counts are forgotten beyond this many shapes (a bound on memory)


_calls: dict[tuple, int] = {}  # eager calls per shape key


def _shape_key(q: torch.Tensor, k: torch.Tensor, causal: bool) -> tuple:
    return (tuple(q.shape), tuple(k.shape), q.dtype, bool(causal), q.device.index)


def calls_before_cudnn(q: torch.Tensor, k: torch.Tensor, causal: bool) -> int | None:
    """Calls of this shape on flash before cuDNN pays for its plan, or None where cuDNN does not qualify."""
    batch, heads, tokens, head_dim = q.shape
    min_tokens = CUDNN_MIN_TOKENS if causal else CUDNN_MIN_TOKENS_BIDIRECTIONAL
    if q.dtype not in (torch.float16, torch.bfloat16) or head_dim not in (64, 128) or tokens < min_tokens:
        return None
    flops = 4.0 * batch * heads * tokens * k.shape[2] * head_dim * (0.5 if causal else 1.0)
    saving_ms = CUDNN_SAVING * flops / (FLASH_TFLOPS * 1e12) * 1e3
    return max(1, math.ceil(CUDNN_PLAN_MS / saving_ms))


def _capturing(q: torch.Tensor) -> bool:
    return q.is_cuda and torch.cuda.is_current_stream_capturing()


def first_backend(q: torch.Tensor, k: torch.Tensor, causal: bool) -> str:
    """The backend to try first for this call (and count the call)."""
    if torch.compiler.is_compiling():
        return "FLASH_ATTENTION"
    threshold = calls_before_cudnn(q, k, causal)
    if threshold is None:
        return "FLASH_ATTENTION"
    key = _shape_key(q, k, causal)
    if _capturing(q):  # not counted; cuDNN only if an eager call past the threshold already built its plan
        return "CUDNN_ATTENTION" if _calls.get(key, 0) > threshold else "FLASH_ATTENTION"
    if len(_calls) >= MAX_TRACKED_SHAPES and key not in _calls:
        _calls.clear()
    _calls[key] = _calls.get(key, 0) + 1
    return "CUDNN_ATTENTION" if _calls[key] > threshold else "FLASH_ATTENTION"


def reset() -> None:
    """Forget every count (tests)."""
    _calls.clear()
