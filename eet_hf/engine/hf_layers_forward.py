"""The decode engine's forward for families without a hand-fused one: HF's own decoder layers, eet's KV arena.

The model-level part of HF's forward (embedding, rotary table, final norm, LM head) is small and family specific
(decoder_families.py); the layers are HF's modules, called as the model's forward calls them, except that
- the attention mask is eet's `SeqBounds` built from the step's device tensors (eet's attention function, which the
  generic adapter registered for the model, takes it as it takes the mask function's output), and
- the cache is an `ArenaStepCache`: `update()` writes the new keys/values into the arena at the step's slot and
  returns the arena's views.
So the layers keep HF's arithmetic exactly (norms, projections, rotary, MLP, residuals — with the eet ops the
generic adapter verified swapped in), there is no host sync, and a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from eet_hf.bounds import SeqBounds

from . import rotary_swap
from .decode_model import ModelView, StepBounds


class ArenaStepCache:
    """The `cache` HF's attention modules see during one engine forward: keys/values go into the arena.

    Only `update` is provided — what HF's attention layers call; anything else a layer asks of its cache is an
    AttributeError, which decoder_families' structural check turns into "not served by the engine".
    """

    def __init__(self, kv: torch.Tensor, slots: torch.Tensor, prefill_len: int | None) -> None:
        self._kv = kv  # [layers, 2, batch, kv_heads, capacity, head_dim]
        self._slots = slots  # int64 [seq]: the cache slots the forward's tokens take
        self._prefill_len = prefill_len  # prompt: attention sees only the first seq slots (dense shapes)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """key/value_states: [batch, kv_heads, seq, head_dim]. Returns the layer's keys and values to attend to."""
        k_cache, v_cache = self._kv[layer_idx, 0], self._kv[layer_idx, 1]
        k_cache.index_copy_(2, self._slots, key_states.to(k_cache.dtype))
        v_cache.index_copy_(2, self._slots, value_states.to(v_cache.dtype))
        if self._prefill_len is not None:
            return k_cache[:, :, : self._prefill_len], v_cache[:, :, : self._prefill_len]
        return k_cache, v_cache


@dataclass(frozen=True)
class HFDecoderStack(ModelView):
    """A decoder-only LM as the engine drives it. `embed(tokens, positions)` -> [batch, seq, hidden] is the
    model-level input part of HF's forward; `rotary` (or None) makes HF's (cos, sin) from the hidden states and
    positions; `final` is the final norm (and any output projection) before `lm_head`."""

    model: nn.Module
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rotary: nn.Module | None
    layers: tuple[nn.Module, ...]
    final: Callable[[torch.Tensor], torch.Tensor]
    lm_head: nn.Module
    cache_kwarg: str  # the name each layer's forward takes its cache by ("cache", "past_key_values", "layer_past")
    kv_heads: int
    head_dim: int
    width: int
    max_positions: int | None
    rotary_modules: tuple[ModuleType, ...] = ()  # modeling modules whose apply_rotary_pos_emb eet's op stands in for

    # DecodeModel (decode_model.py)
    def forward_last_logits(
        self, tokens: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor, bounds: StepBounds,
        padded: bool = True,
    ) -> torch.Tensor:
        batch, seq = tokens.shape
        prefill = seq > 1
        kv_len = seq if prefill else kv.shape[-2]
        # Prompts are written from slot 0 and decode steps at the slot every sequence shares (StepBounds).
        slots = bounds.write_pos[:1].long() + torch.arange(seq, device=tokens.device)
        cache = ArenaStepCache(kv, slots, seq if prefill else None)
        mask = SeqBounds(bounds.kv_start, bounds.kv_end, bounds.q_offset, causal=True, q_len=seq, kv_len=kv_len,
                         padded=padded or not prefill)
        hidden = self.embed(tokens, positions)
        extra = {} if self.rotary is None else {"position_embeddings": self.rotary(hidden, positions)}
        with rotary_swap.swapped(self.rotary_modules):
            for layer in self.layers:
                out = layer(hidden, attention_mask=mask, position_ids=positions, use_cache=True,
                            **{self.cache_kwarg: cache}, **extra)
                hidden = out[0] if isinstance(out, tuple) else out
        # Only the last position feeds the LM head (HF's logits_to_keep=1 in generate); the norm is per position.
        return self.lm_head(self.final(hidden[:, -1:]))[:, 0]
