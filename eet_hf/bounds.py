"""Per-sequence attention bounds: what eet's mask function hands to its attention instead of a mask.

EET's mask fusion: HF would build a [batch, 1, q_len, kv_len] mask per forward; eet builds three int32
vectors of length batch and the kernels compute visibility from them (rule in csrc/kernels.h).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import ops
from .ops import reference


@dataclass(frozen=True)
class SeqBounds:
    """Key j is visible to query row i of sequence b iff kv_start[b] <= j < kv_end[b] and
    (not causal or j <= q_offset[b] + i). All int32 [batch], on the model's device."""

    kv_start: torch.Tensor
    kv_end: torch.Tensor
    q_offset: torch.Tensor
    causal: bool
    q_len: int
    kv_len: int
    # Known on the host: False when every key of every sequence is real (no padding). The op then takes the
    # fastest dense kernel for unpadded prefill; True (the safe default) keeps the bounds kernel.
    padded: bool = True

    # HF treats a mask function's output as a mask tensor in a few places: generate() prepares the mask of a
    # compileable (static) cache before the forward and passes it in as `attention_mask`, and the model then asks
    # `attention_mask.ndim` (GPT-2: `< 4`; masking_utils: `== 2`, a 2-D padding mask to convert). The bounds
    # describe HF's 4-D [batch, 1, q_len, kv_len] mask, and say so; eet's mask function passes them through.
    ndim = 4

    @property
    def shape(self) -> torch.Size:
        """The shape of the HF mask these bounds stand for: [batch, 1, q_len, kv_len]."""
        return torch.Size((self.kv_start.shape[0], 1, self.q_len, self.kv_len))

    def dim(self) -> int:
        return self.ndim

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> SeqBounds:
        """The same bounds on `device`. accelerate's dispatch hooks (device_map across GPUs) move a block's
        inputs with `.to`, so a block on another GPU gets its bounds there, as HF's mask tensors would be."""
        move = {name: getattr(self, name).to(device, non_blocking=non_blocking)
                for name in ("kv_start", "kv_end", "q_offset")}
        if all(moved is getattr(self, name) for name, moved in move.items()):
            return self  # already there (Tensor.to returns the tensor itself)
        return dataclasses.replace(self, **move)

    def dense_mask(self) -> torch.Tensor:
        """The same visibility as HF's boolean [batch, 1, q_len, kv_len] mask, for fallbacks."""
        visible = reference.visible_keys(
            self.kv_start, self.kv_end, self.q_offset, self.causal, self.q_len, self.kv_len
        )
        return visible.unsqueeze(1)

    def rows_without_keys(self) -> torch.Tensor:
        """bool [batch, q_len]: query rows that see no key (left padding under a causal mask, empty sequences),
        from the bounds alone (no [q_len, kv_len] mask)."""
        rows = torch.arange(self.q_len, device=self.q_offset.device, dtype=torch.int32)
        empty = (self.kv_end <= self.kv_start)[:, None]
        if self.causal:
            empty = empty | (self.q_offset[:, None] + rows < self.kv_start[:, None])
        return empty.expand(-1, self.q_len)


@dataclass(frozen=True)
class DenseMask:
    """HF's boolean [batch, 1, q_len, kv_len] mask (True: visible), built by eet's mask function for a pattern that
    bounds do not express (sliding window, padding with holes, packing, overlays). Wrapped so that eet's attention
    tells it from a mask the caller prepared (which HF's attention takes as it is) and can hand it to HF's
    attention in the format of the implementation it calls (eager adds a float mask)."""

    mask: torch.Tensor

    # As SeqBounds: HF asks a prepared (static-cache) mask for its ndim / shape.
    ndim = 4

    @property
    def shape(self) -> torch.Size:
        return self.mask.shape

    def dim(self) -> int:
        return self.ndim

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> DenseMask:
        """The same mask on `device` (accelerate's dispatch hooks move a block's inputs with `.to`)."""
        moved = self.mask.to(device, non_blocking=non_blocking)
        return self if moved is self.mask else DenseMask(moved)


def _relative_offsets(q_offset: int | torch.Tensor, kv_offset: int, batch: int, device: torch.device) -> torch.Tensor:
    """q_offset - kv_offset as int32 [batch]: one fill for an int offset (a graph node fewer than fill, subtract)."""
    if isinstance(q_offset, torch.Tensor):
        return q_offset.to(device=device, dtype=torch.int32).reshape(-1).expand(batch) - int(kv_offset)
    return torch.full((batch,), int(q_offset) - int(kv_offset), dtype=torch.int32, device=device)


def inspect_padding(padding_mask: torch.Tensor) -> tuple[bool, bool, tuple[torch.Tensor, torch.Tensor]]:
    """(contiguous, full, runs) for a [batch, kv] mask (nonzero: a real key): contiguous when every row is one run
    of real keys (left or right padding, or none) or has none — the shapes SeqBounds can express; full when nothing
    is padding; runs = (start, end) int32 [batch] of each row's run, which from_padding_mask takes so that they are
    computed once. One kernel and one read-back from the device."""
    start, end, flags = ops.padding_runs(padding_mask)
    contiguous, full = flags[:2].tolist()
    return bool(contiguous), bool(full), (start, end)


def from_padding_mask(
    padding_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    q_offset: int | torch.Tensor,
    kv_offset: int,
    causal: bool,
    device: torch.device,
    padded: bool = True,
    runs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SeqBounds:
    """Bounds for HF's mask arguments: padding_mask is the 2D [batch, >=kv_offset] mask (nonzero: a real key;
    None: no padding); q_offset and kv_offset are the absolute positions of the first query and first key.
    runs: the window's (start, end) when inspect_padding has computed them already."""
    if padding_mask is None:
        kv_start = torch.zeros(batch, dtype=torch.int32, device=device)
        kv_end = torch.full((batch,), kv_len, dtype=torch.int32, device=device)
    elif runs is not None:
        kv_start, kv_end = (bound.to(device) for bound in runs)
    else:
        window = padding_mask[:, kv_offset : kv_offset + kv_len]
        kv_start, kv_end, _ = ops.padding_runs(window.to(device=device))
    rel_offset = _relative_offsets(q_offset, kv_offset, batch, device)
    return SeqBounds(kv_start, kv_end, rel_offset, causal, q_len, kv_len, padded=padded and padding_mask is not None)
