"""Argument checks run in Python before the mutating / gathering ops reach the dispatcher.

The CUDA bindings check the same things with TORCH_CHECK, but an error thrown from the CUDA kernel of the
mutable op `kv_append` crashed the process on the H200 (torch 2.11, first GPU run of this session); until that
is understood, the wrappers refuse bad arguments here, with the same messages, so no user error reaches it.
"""

from __future__ import annotations

import torch


class EetArgumentError(ValueError, RuntimeError):
    """Bad op arguments: a ValueError (as the reference ops raise) and a RuntimeError (as TORCH_CHECK raises)."""


def _fail(op: str, message: str) -> None:
    raise EetArgumentError(f"eet::{op}: {message}")


def _same_device(op: str, named: dict[str, torch.Tensor]) -> None:
    """All on one device; when any is on a GPU, that GPU."""
    device = next((t.device for t in named.values() if t.is_cuda), None)
    if device is None:
        return
    for name, t in named.items():
        if device.type == "cuda" and not t.is_cuda:
            _fail(op, f"{name} must be a CUDA tensor, got {t.device}")
        if t.device != device:
            _fail(op, f"{name} is on {t.device}, expected {device}")


def kv_append(qkv, bias, k_cache, v_cache, write_pos, heads_q: int, heads_kv: int) -> None:
    op = "kv_append"
    named = {"qkv": qkv, "k_cache": k_cache, "v_cache": v_cache, "write_pos": write_pos}
    if bias is not None:
        named["bias"] = bias
    _same_device(op, named)
    if heads_q <= 0 or heads_kv <= 0:
        _fail(op, f"heads_q and heads_kv must be positive, got {heads_q} and {heads_kv}")
    if qkv.dim() != 3:
        _fail(op, f"qkv must be 3-D [batch, seq, (heads_q + 2 * heads_kv) * head_dim], got shape {tuple(qkv.shape)}")
    batch, _, width = qkv.shape
    blocks = heads_q + 2 * heads_kv
    if width == 0 or width % blocks:
        _fail(op, f"qkv's last dim ({width}) must be (heads_q + 2 * heads_kv) * head_dim = {blocks} * head_dim")
    head_dim = width // blocks
    expected = (batch, heads_kv, head_dim)
    if k_cache.dim() != 4 or (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != expected:
        _fail(op, f"k_cache must be [batch={batch}, heads_kv={heads_kv}, len, head_dim={head_dim}] (both caches "
                  f"must be), got {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        _fail(op, f"v_cache shape {tuple(v_cache.shape)} differs from k_cache's {tuple(k_cache.shape)}")
    if k_cache.dtype != qkv.dtype or v_cache.dtype != qkv.dtype:
        _fail(op, f"caches' dtype ({k_cache.dtype}, {v_cache.dtype}) differs from qkv's {qkv.dtype}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        _fail(op, "k_cache and v_cache must have a contiguous last dim")
    if k_cache.data_ptr() == v_cache.data_ptr():
        _fail(op, "k_cache and v_cache are the same memory")
    if write_pos.dtype != torch.int32 or write_pos.dim() != 1 or write_pos.shape[0] != batch:
        _fail(op, f"write_pos must be an int32 tensor of shape [{batch}], got {write_pos.dtype} "
                  f"{tuple(write_pos.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != width or bias.dtype != qkv.dtype):
        _fail(op, f"bias must have shape [{width}] and qkv's dtype, got {bias.dtype} {tuple(bias.shape)}")


def embedding(input_ids, position_ids, wte, wpe) -> None:
    op = "embedding"
    named = {"input_ids": input_ids, "position_ids": position_ids, "wte": wte}
    if wpe is not None:
        named["wpe"] = wpe
    _same_device(op, named)
    for name, t in (("input_ids", input_ids), ("position_ids", position_ids)):
        if t.dtype not in (torch.int64, torch.int32) or t.dim() != 2:
            _fail(op, f"{name} must be a 2-D int64 or int32 tensor, got {t.dtype} {tuple(t.shape)}")
    if position_ids.shape != input_ids.shape:
        _fail(op, f"position_ids {tuple(position_ids.shape)} must match input_ids {tuple(input_ids.shape)} "
                  "(expand it first)")
    if wte.dim() != 2:
        _fail(op, f"wte must be 2-D [vocab, hidden], got {tuple(wte.shape)}")
    if wpe is not None and (wpe.dim() != 2 or wpe.shape[1] != wte.shape[1]):
        _fail(op, f"wpe must be 2-D [positions, hidden={wte.shape[1]}], got {tuple(wpe.shape)}")
    if wpe is not None and wpe.dtype != wte.dtype:
        _fail(op, f"wpe dtype {wpe.dtype} differs from wte's {wte.dtype}")
