"""eet's fused rotary op inside the engine's forward, for HF attention modules that call `apply_rotary_pos_emb`.

HF's attention modules look the function up in their modeling module's globals at every call. While the engine runs
a forward (hf_layers_forward.py), `swapped()` points that name at a wrapper that runs eet's `rotary` op — one
kernel where HF's formula launches about ten — and puts HF's function back afterwards. Rotary embeddings are
switched only once verified equal: the first call per (HF function, dtype) runs both and compares them bit for bit
(the op rounds where HF's torch ops round); any difference keeps HF's function for good, logged. Calls the op does
not take (other layouts, mixed dtypes, extra arguments) run HF's function.

The swap is process-wide for the duration of one engine forward (the engine is not re-entrant across threads).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

from eet_hf import ops
from eet_hf._log import warn_once

NAME = "apply_rotary_pos_emb"
_EXPECTED_PARAMS = ["q", "k", "cos", "sin", "unsqueeze_dim"]
# (HF function, dtype) -> whether eet's op reproduced it on its first call.
_VERIFIED: dict[tuple[Callable, torch.dtype], bool] = {}


def _plain_function(fn: object) -> Callable | None:
    """The Python function behind a modeling module's apply_rotary_pos_emb. transformers >= 5.25 (with the `kernels`
    package) decorates it with use_kernel_forward_from_hub, which makes it an nn.Module instance whose forward calls
    the function it closes over (or a hub kernel, for a model kernelized on purpose)."""
    if inspect.isfunction(fn):
        return fn
    if isinstance(fn, torch.nn.Module):
        cells = getattr(type(fn).forward, "__closure__", None) or ()
        inner = [c.cell_contents for c in cells if inspect.isfunction(c.cell_contents)]
        return next((f for f in inner if f.__name__ == NAME), None)
    return None


def modules_using_rotary(attention_modules: list[torch.nn.Module]) -> tuple[ModuleType, ...]:
    """The modeling modules of these attention modules whose apply_rotary_pos_emb has HF's Llama/NeoX signature."""
    found = []
    for attn in attention_modules:
        module = sys.modules.get(type(attn).__module__)
        fn = _plain_function(getattr(module, NAME, None))
        if module is None or module in found or fn is None:
            continue
        if list(inspect.signature(fn).parameters) == _EXPECTED_PARAMS:
            found.append(module)
    return tuple(found)


def _takes(q, k, cos, sin) -> bool:
    tensors = (q, k, cos, sin)
    if not all(isinstance(t, torch.Tensor) for t in tensors) or len({t.dtype for t in tensors}) != 1:
        return False
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    rot = cos.shape[-1]
    return (q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2] == cos.shape[1] and q.shape[-1] == k.shape[-1]
            and cos.shape[0] in (1, q.shape[0]) and rot % 2 == 0 and rot <= q.shape[-1]
            and all(t.stride(-1) == 1 for t in tensors))


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _wrapper(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if unsqueeze_dim != 1 or not _takes(q, k, cos, sin):
            return original(q, k, cos, sin, unsqueeze_dim)
        key = (original, q.dtype)
        verified = _VERIFIED.get(key)
        if verified is None:
            expected = original(q, k, cos, sin, unsqueeze_dim)
            if _capturing():  # comparing needs a read-back: decide on an eager call
                return expected
            got = ops.rotary(q, k, cos, sin)
            _VERIFIED[key] = all(torch.equal(a, b) for a, b in zip(got, expected))
            if not _VERIFIED[key]:
                warn_once(f"eet rotary does not reproduce {original.__module__}.{NAME} in {q.dtype}: HF's kept")
            return expected
        return ops.rotary(q, k, cos, sin) if verified else original(q, k, cos, sin, unsqueeze_dim)

    return apply_rotary_pos_emb


@contextlib.contextmanager
def swapped(modules: tuple[ModuleType, ...]) -> Iterator[None]:
    """Within the block, `apply_rotary_pos_emb` of each module is eet's (verified) op."""
    saved = [(module, getattr(module, NAME)) for module in modules]
    try:
        for module, original in saved:
            setattr(module, NAME, _wrapper(original))
        yield
    finally:
        for module, original in saved:
            setattr(module, NAME, original)
