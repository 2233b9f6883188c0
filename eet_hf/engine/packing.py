"""Packed projection weights without extra memory: several nn.Linear weights as row blocks of one matrix.

The fused decoder step reads q/k/v as one [q + k + v, hidden] matrix and gate/up as one [2 * inner, hidden]
matrix (one kernel each). `pack_rows` copies the modules' weights into one new matrix and makes each HF parameter a
view of its row block (`param.data = block`): the Parameter objects stay the same, `state_dict()` returns the same
values under the same names, the old storages are freed, and `restore()` has nothing to undo. Moving the model
(`.to()`, `.half()`) gives every parameter its own storage again; the engine packs anew on its next call.

HF's Conv1D (GPT-2) stores its weight as [in, out]; the fused step reads [out, in] rows. `transposed` copies the
weight once into an [out, in] matrix and makes the parameter its transposed view: HF's `addmm(bias, x, weight)` takes
the view as it is, `state_dict()` values are unchanged (save_pretrained writes them contiguous), and no memory is
added. `.to()` keeps a dense tensor's strides, so a moved model is still transposed and is not copied again.
"""

from __future__ import annotations

import torch
from torch import nn


def _packed_base(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The matrix `tensors` are consecutive row blocks of (a view spanning them), or None when they are not."""
    first = tensors[0]
    if any(t.dtype != first.dtype or t.device != first.device or not t.is_contiguous() for t in tensors):
        return None
    if first.device.type == "meta":
        return None
    storage = first.untyped_storage()
    offset = first.storage_offset()
    for t in tensors:
        if t.untyped_storage().data_ptr() != storage.data_ptr() or t.storage_offset() != offset:
            return None
        offset += t.numel()
    shape = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    return first.new_empty(0).set_(storage, first.storage_offset(), shape, first.stride())


def _pack(params: list[nn.Parameter]) -> torch.Tensor:
    base = _packed_base([p.data for p in params])
    if base is not None:
        return base
    packed = torch.cat([p.detach() for p in params], dim=0)
    start = 0
    for p in params:
        p.data = packed[start : start + p.shape[0]]
        start += p.shape[0]
    return packed


def pack_rows(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [sum of out_features, in_features], bias [sum] or None) backing the modules' own parameters.
    Idempotent: already packed modules return the same matrix without copying. Biases: all or none."""
    weight = _pack([m.weight for m in linears])
    biases = [m.bias for m in linears]
    if all(b is None for b in biases):
        return weight, None
    if any(b is None for b in biases):
        raise ValueError("pack_rows: some of the projections have a bias and some do not")
    return weight, _pack(biases)


def transposed(conv1d: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of a Conv1D (weight [in, out]) whose parameter is, from now on, the
    transposed view of that matrix. Idempotent: a weight that already is such a view is returned without a copy."""
    weight = conv1d.weight
    if weight.dim() != 2:
        raise ValueError(f"transposed: a Conv1D weight is 2-D, got shape {tuple(weight.shape)}")
    if weight.device.type != "meta" and not weight.data.t().is_contiguous():
        weight.data = weight.detach().t().contiguous().t()
    return weight.data.t(), conv1d.bias
