"""What the decode loop needs from a model: its KV geometry and a forward that writes into eet's KV arena.

Two kinds implement it: `gpt2_forward.GPT2Weights` (GPT-2 through eet's fused ops alone) and
`hf_layers_forward.HFDecoderStack` (any family whose decoder layers call HF's attention interface: HF's own
layer modules run, with eet's attention and the arena standing in for HF's mask and cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class StepBounds:
    """Where this forward's tokens go and what they see; int32 [batch] on the device (see SeqBounds).

    Every sequence of a forward writes its first new token at the same slot (prompts are left-padded), so
    write_pos holds one value repeated; it is a tensor so that a captured graph reads the current step's slot.
    """

    write_pos: torch.Tensor  # slot of each sequence's first new token in the cache
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    q_offset: torch.Tensor


class DecodeModel(Protocol):
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    width: int  # hidden size, for the activation-memory estimate
    dtype: torch.dtype
    device: torch.device
    max_positions: int | None  # learned position embeddings bound the position ids; None: no bound

    def storage_signature(self) -> tuple:
        """Addresses and dtypes of every weight: a captured graph is valid only while none of them moved."""
        ...

    def forward_last_logits(
        self, tokens: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor, bounds: StepBounds,
        padded: bool = True,
    ) -> torch.Tensor:
        """tokens, positions: [batch, seq]; kv: [layers, 2, batch, kv_heads, capacity, head_dim].
        Logits of each sequence's last position, [batch, vocab] in the model's dtype. seq > 1 is a prompt
        written to slots [0, seq); seq == 1 a decode step at bounds.write_pos."""
        ...


def tensor_signature(tensors: list[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t.dtype, t.device) for t in tensors)


class ModelView:
    """The DecodeModel properties of a view over an HF LM (`model`, `layers`, `lm_head` attributes): layers, vocab,
    dtype and device from the LM head, and the storage signature of every parameter and buffer."""

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def vocab(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def storage_signature(self) -> tuple:
        return tensor_signature([*self.model.parameters(), *self.model.buffers()])
