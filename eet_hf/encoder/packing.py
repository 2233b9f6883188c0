"""Padding removal: where each real token of a padded [batch, seq_len] batch goes in a packed token axis.

Sequence b's real tokens are the run [start[b], end[b]) of its row (left or right padding, or none; eet's
mask function has already sent masks with holes to HF's path). Packed rows: sequence 0's tokens, then
sequence 1's, ...; cu_seqlens holds the prefix sums of the lengths, the layout eet::attention_varlen reads.

Three layouts (all computed on the device, no host read inside):
- exact: rows = the real tokens only (total known on the host from one read per forward); GEMMs and fused
  ops then touch no padding at all.
- capacity (CUDA-graph capture, torch.compile) short of batch * seq_len: rows = a fixed count, a bound on the real
  tokens (capacity_for). The real tokens come first as above; after them, each sequence's padding forms one extra
  segment of its own (at most seq_len rows), cut where the rows end, so every row belongs to some segment,
  attention stays finite everywhere and max_seqlen stays seq_len. Padding rows are discarded by unpack().
- in place (wherever all batch * seq_len rows are kept: full capacity, or no padding at all): every position keeps
  its row, so pack and unpack are reshapes, and each row of the batch is three segments: padding before start, the real tokens, padding
  from end on (empty segments allowed). The same rows as a permuted full capacity, without the permutation: the permuted
  plan, pack and unpack issue about 30 tiny index kernels, of the ~180 kernels of a graphed bert-base 1 x 128 forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eet_hf import ops


@dataclass(frozen=True)
class Packing:
    """How a padded batch maps onto packed rows. All tensors on the batch's device."""

    index: torch.Tensor | None  # int64 [rows]: flat padded position (b * seq_len + s) of each row; None: in place
    inverse: torch.Tensor | None  # int64 [batch * seq_len]: packed row of each padded position; None: in place
    real: torch.Tensor  # bool [batch, seq_len]: True where the padded position is a real token
    cu_seqlens: torch.Tensor  # int32 [segments + 1]: segment b is packed rows [cu[b], cu[b + 1])
    max_seqlen: int  # longest segment (an upper bound is enough)
    batch: int
    seq_len: int

    @property
    def rows(self) -> int:
        return self.batch * self.seq_len if self.index is None else self.index.shape[0]


def _clamped_bounds(start: torch.Tensor, end: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    start = start.to(torch.int64).clamp(0, seq_len)
    end = torch.maximum(end.to(torch.int64).clamp(0, seq_len), start)
    return start, end


def host_summary(start: torch.Tensor, end: torch.Tensor, seq_len: int) -> tuple[int, int, bool]:
    """(total real tokens, longest sequence, any sequence not starting at position 0): ONE host read."""
    if start.shape[0] == 0:
        return 0, 0, False
    start, end = _clamped_bounds(start, end, seq_len)
    lengths = end - start
    total, longest, left = torch.stack([lengths.sum(), lengths.max(), (start > 0).any().to(torch.int64)]).tolist()
    return int(total), int(longest), bool(left)


CAPACITY_STEPS = 8  # capacity_for's granularity: eighths of the padded batch (at most 12.5% of padding kept)


def capacity_for(total: int, padded_tokens: int, steps: int = CAPACITY_STEPS) -> int:
    """Packed rows of a fixed-shape (graph) forward for a batch of `total` real tokens out of `padded_tokens`:
    total rounded up to the next 1/steps of padded_tokens (at least one step). A graph captured at this
    capacity serves every batch of the same shape whose real tokens round to it, so padding removal pays
    inside graphs too, while one shape needs at most `steps` graphs."""
    if padded_tokens <= 0:
        return 0
    step = -(-padded_tokens // steps)
    return min(padded_tokens, max(step, -(-total // step) * step))


def plan(start: torch.Tensor, end: torch.Tensor, seq_len: int, total: int | None = None,
         max_seqlen: int | None = None, capacity: int | None = None) -> Packing:
    """Packing for real-token runs [start[b], end[b]) (int [batch] each) of rows of length seq_len.

    total / max_seqlen given (from host_summary): exact mode. None: capacity mode (no host read; safe inside
    CUDA-graph capture and torch.compile) with `capacity` rows (default batch * seq_len), which must be at
    least the real tokens of every batch it runs on (capacity_for). A plan of all batch * seq_len rows (by capacity,
    or because nothing is padding) takes the in-place layout: on the H200 bert-base ran 2-8% faster with it than with
    the permuted rows at batches 1 and 8 (seq 128) and 32 x 512 padded, 2-4% slower at 32 x 128 padded
    (docs/encoder.md).
    """
    batch = start.shape[0]
    if (capacity if total is None else total) in (None, batch * seq_len):
        return _in_place(start, end, seq_len)
    device = start.device
    start, end = _clamped_bounds(start, end, seq_len)
    lengths = end - start
    cu = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    cu[1:] = torch.cumsum(lengths, 0)
    pads = seq_len - lengths
    pad_cu = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    pad_cu[1:] = torch.cumsum(pads, 0)
    n_real = cu[-1]

    s = torch.arange(seq_len, device=device).view(1, -1)
    real = (s >= start.view(-1, 1)) & (s < end.view(-1, 1))
    # Packed row of every padded position: a real token at its sequence's offset; padding after all real
    # tokens, sequence by sequence, in position order (positions before start, then from end on).
    real_row = cu[:-1].view(-1, 1) + (s - start.view(-1, 1))
    pad_rank = torch.where(s < start.view(-1, 1), s, s - lengths.view(-1, 1))
    pad_row = n_real + pad_cu[:-1].view(-1, 1) + pad_rank
    inverse = torch.where(real, real_row, pad_row).reshape(-1)
    index = torch.empty_like(inverse).scatter_(0, inverse, torch.arange(inverse.shape[0], device=device))

    if total is None:
        rows = inverse.shape[0] if capacity is None else capacity
        if not 0 <= rows <= inverse.shape[0]:
            raise ValueError(f"packing capacity {rows} outside [0, batch * seq_len = {inverse.shape[0]}]")
        # Padding segments past `rows` are cut there (the last ones become empty): cu_seqlens keeps its shape.
        segments = torch.cat([cu, (n_real + pad_cu[1:]).clamp(max=rows)])
        return Packing(index[:rows], inverse, real, segments.to(torch.int32), seq_len, batch, seq_len)
    longest = seq_len if max_seqlen is None else max_seqlen
    return Packing(index[:total], inverse, real, cu.to(torch.int32), longest, batch, seq_len)


def _in_place(start: torch.Tensor, end: torch.Tensor, seq_len: int) -> Packing:
    """The in-place layout (module docstring): row b * seq_len + s is position s of sequence b; segments
    [b * seq_len, + start[b]), [+ start[b], + end[b]), [+ end[b], (b + 1) * seq_len). One kernel on CUDA
    (eet::in_place_packing; torch's formulation was ~16 launches)."""
    cu_seqlens, real = ops.in_place_packing(start.to(torch.int32), end.to(torch.int32), seq_len)
    return Packing(None, None, real, cu_seqlens, seq_len, start.shape[0], seq_len)


def pack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """[batch, seq_len, ...] -> [rows, ...]: the packed rows (real tokens first, except in place: a reshape)."""
    flat = x.reshape(packing.batch * packing.seq_len, *x.shape[2:])
    return flat if packing.index is None else flat.index_select(0, packing.index)


def unpack(y: torch.Tensor, packing: Packing) -> torch.Tensor:
    """[rows, ...] -> [batch, seq_len, ...] with zeros at padded positions (never NaN, never stale values)."""
    if packing.index is None:
        padded = y
    elif packing.rows == packing.batch * packing.seq_len:
        padded = y.index_select(0, packing.inverse)
    else:
        # Exact mode, or a capacity short of batch * seq_len: padded positions may have no packed row; read
        # row 0 there, then zero it below.
        padded = y.index_select(0, torch.where(packing.real.reshape(-1), packing.inverse, 0)) if packing.rows else (
            y.new_zeros(packing.batch * packing.seq_len, *y.shape[1:]))
    padded = padded.view(packing.batch, packing.seq_len, *y.shape[1:])
    mask = packing.real.view(packing.batch, packing.seq_len, *([1] * (y.dim() - 1)))
    return torch.where(mask, padded, 0)  # a Python scalar: no tensor of zeros to fill first
