"""Backward for eet's ops: each functional op is differentiated through its reference implementation.

The forward is whatever the dispatcher picks (the CUDA kernel on GPU, the reference on CPU); the backward
recomputes the reference forward (reference.py, fp32 math) from the saved inputs under autograd and returns
torch.autograd.grad of it. So a gradient through an eet op is the gradient of the specification, the same
function HF's modules compute, with no hand-written formulas to drift from it. Only the inputs are saved; the
recomputation costs one extra forward in backward (as activation checkpointing does). Under create_graph=True
(double backward) the recomputation is recorded too, so second derivatives are right as well.

kv_append writes the KV cache in place; it has no backward and refuses inputs that require grad (eet's decode
loop runs it under torch.no_grad()).

Every op thus has a kernel at the Autograd key (a Python one, about 3 us a call): the wrappers in __init__.py
step past it when grad mode is off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _library, reference

# kv_append mutates the caches (its own rule below); argmax_rows returns indices and padding_runs /
# in_place_packing mask bookkeeping, which have no gradient.
NOT_DIFFERENTIABLE = ("argmax_rows", "padding_runs", "in_place_packing")
FUNCTIONAL_OPS = tuple(name for name in _library.SCHEMAS if name not in ("kv_append", *NOT_DIFFERENTIABLE))
# The reference each op's backward differentiates, where it is not the op's own: attention_varlen's loops over
# the sequences with a host read of cu_seqlens, which torch.compile cannot trace; its masked form can.
DIFFERENTIATED = {"attention_varlen": reference.attention_varlen_masked}


def _setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
    ctx.tensor_positions = [i for i, arg in enumerate(inputs) if isinstance(arg, torch.Tensor)]
    ctx.constants = {i: arg for i, arg in enumerate(inputs) if not isinstance(arg, torch.Tensor)}
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_positions))


def _reference_backward(fn: Callable) -> Callable:
    """A backward that differentiates `fn` (the op's reference) at the saved inputs."""

    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        # Grad mode is on inside backward only under create_graph=True: then the saved inputs stay attached to
        # their graph, so the gradient computed here is itself differentiable.
        higher_order = torch.is_grad_enabled()
        args: list[Any] = [None] * (len(ctx.tensor_positions) + len(ctx.constants))
        for i, value in ctx.constants.items():
            args[i] = value
        wanted = [i for i in ctx.tensor_positions if ctx.needs_input_grad[i]]
        for i, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
            args[i] = saved if higher_order else saved.detach().requires_grad_(i in wanted)
        with torch.enable_grad():
            outputs = fn(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        # Outputs whose gradient is None (unused by the loss) or that do not depend on a wanted input add nothing.
        pairs = [(out, grad) for out, grad in zip(outputs, grads) if grad is not None and out.requires_grad]
        result: list[torch.Tensor | None] = [None] * len(args)
        if not wanted or not pairs:
            return tuple(result)
        got = torch.autograd.grad(
            [out for out, _ in pairs], [args[i] for i in wanted], [grad for _, grad in pairs],
            allow_unused=True, create_graph=higher_order,
        )
        for i, grad in zip(wanted, got):
            result[i] = grad
        return tuple(result)

    return backward


def _kv_append_autograd(
    qkv: torch.Tensor, bias: torch.Tensor | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
    write_pos: torch.Tensor, heads_q: int, heads_kv: int,
) -> torch.Tensor:
    tensors = (qkv, bias, k_cache, v_cache)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "eet::kv_append writes k and v into the KV cache in place and has no backward, but an input requires "
            "grad; call it under torch.no_grad() (eet's decode loop does), or use HF's cache update for training"
        )
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.eet.kv_append(qkv, bias, k_cache, v_cache, write_pos, heads_q, heads_kv)


def _register() -> None:
    """Register the Autograd kernels of every eet op (once: this module is imported once)."""
    for name in FUNCTIONAL_OPS:
        torch.library.register_autograd(
            f"eet::{name}", _reference_backward(DIFFERENTIATED.get(name, getattr(reference, name))), setup_context=_setup_context,
            lib=_library._LIB,
        )
    _library._LIB.impl("kv_append", _kv_append_autograd, "Autograd")


_register()
