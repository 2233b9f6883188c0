"""GPT-2 tensor parallelism, Megatron-style: each rank keeps 1/N of the attention heads and MLP columns.

transformers has no tensor-parallel plan for GPT-2 (GPT2Config.base_model_tp_plan is None in 5.17 through 5.24),
so this adapter splits the weights itself. Per block, for world size N and rank r (Conv1D stores [in, out]):

    attn.c_attn  [E, 3E] -> [E, 3E/N]   columns of heads r*H/N ... (r+1)*H/N taken from each of q, k and v
    attn.c_proj  [E, E]  -> [E/N, E]    the matching rows; partial sums all-reduced, then the bias added once
    mlp.c_fc     [E, I]  -> [E, I/N]    columns (and bias) of block r
    mlp.c_proj   [I, E]  -> [I/N, E]    rows; all-reduced, then the bias added once

GPT2Attention then runs with H/N local heads (num_heads, split_size set; head_dim unchanged): HF's forward and
eet's fused block forward (patches/gpt2.py), attention and MLP need no change, since they take head and column
counts from the tensors. Embeddings, LayerNorms and the LM head stay replicated, so every rank computes the same
hidden states and logits. Inference only: the all-reduce carries no gradient.
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist
from torch import nn
from transformers.models.gpt2 import modeling_gpt2 as hf

from eet_hf.errors import EetUnsupportedError

MODEL_TYPES = ("gpt2",)
GROUP_ATTR = "_eet_tp_group"  # set on each row-parallel Conv1D: the process group its all-reduce runs over


def check(model: nn.Module, world: int) -> list[hf.GPT2Block]:
    """The blocks to shard; raises EetUnsupportedError (before anything is changed) when they can't be split."""
    config = model.config
    blocks = [m for m in model.modules() if isinstance(m, hf.GPT2Block)]
    if not blocks:
        raise EetUnsupportedError("eet_hf tensor parallel: no GPT2Block found in the model; nothing to shard")
    if config.n_head % world:
        raise EetUnsupportedError(
            f"eet_hf tensor parallel: GPT-2's n_head={config.n_head} attention heads are not divisible by the "
            f"world size {world}; use a process group whose size divides {config.n_head}"
        )
    inner = blocks[0].mlp.c_fc.nf
    if inner % world:
        raise EetUnsupportedError(
            f"eet_hf tensor parallel: GPT-2's MLP width {inner} (n_inner) is not divisible by the world size {world}"
        )
    if any(hasattr(b, "crossattention") for b in blocks):
        raise EetUnsupportedError("eet_hf tensor parallel: cross-attention GPT-2 (add_cross_attention) is not split")
    if any(hasattr(b.attn.c_proj, GROUP_ATTR) or b.attn.num_heads != config.n_head for b in blocks):
        raise EetUnsupportedError("eet_hf tensor parallel: this GPT-2 is already sharded (or its heads were pruned)")
    return blocks


def shard(model: nn.Module, group: dist.ProcessGroup, rank: int, world: int) -> None:
    """Keep rank `rank`'s part of every block of `model` (in place, permanently; the rest is freed)."""
    for block in check(model, world):
        attn, mlp = block.attn, block.mlp
        local = attn.split_size // world  # local q (and k, v) width = local heads * head_dim
        q, k, v = attn.c_attn.weight.split(attn.split_size, dim=1)
        qb, kb, vb = attn.c_attn.bias.split(attn.split_size, dim=0)
        part = slice(rank * local, (rank + 1) * local)
        _set(attn.c_attn, torch.cat([q[:, part], k[:, part], v[:, part]], 1), torch.cat([qb[part], kb[part], vb[part]]))
        attn.c_attn.nf = 3 * local
        attn.num_heads //= world
        attn.split_size = local
        _row_parallel(attn.c_proj, part, group)

        inner = mlp.c_fc.nf // world
        cols = slice(rank * inner, (rank + 1) * inner)
        _set(mlp.c_fc, mlp.c_fc.weight[:, cols], mlp.c_fc.bias[cols])
        mlp.c_fc.nf = inner
        _row_parallel(mlp.c_proj, cols, group)


def _set(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    # Copies (clone), so the full tensors' storage is freed once the old parameters go.
    conv.weight = nn.Parameter(weight.clone(memory_format=torch.contiguous_format), conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.clone(memory_format=torch.contiguous_format), conv.bias.requires_grad)


def _row_parallel(conv: nn.Module, rows: slice, group: dist.ProcessGroup) -> None:
    """Keep `rows` of the Conv1D's [in, out] weight; its forward sums the ranks' partial products."""
    _set(conv, conv.weight[rows], conv.bias)
    conv.nx = conv.weight.shape[0]
    setattr(conv, GROUP_ATTR, group)
    # accelerate's dispatch hooks keep the real forward in `_old_forward`: replace that one, keeping the hook.
    slot = "_old_forward" if "_old_forward" in conv.__dict__ else "forward"
    conv.__dict__[slot] = types.MethodType(row_parallel_forward, conv)


def row_parallel_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: [..., in/N] (this rank's slice) -> [..., out], identical on every rank: x @ W_r summed over ranks + b."""
    if self.training and torch.is_grad_enabled():
        raise EetUnsupportedError(
            "eet_hf tensor parallel is inference-only: the all-reduce carries no gradient (call model.eval() or "
            "run under torch.no_grad())"
        )
    out = torch.mm(x.reshape(-1, x.shape[-1]), self.weight)
    dist.all_reduce(out, group=getattr(self, GROUP_ATTR))
    # The bias is added after the sum, once, not by every rank.
    return out.add_(self.bias).view(*x.shape[:-1], out.shape[-1])
