"""Attention masks of every shape the mask bookkeeping ops meet (eet::padding_runs, eet::in_place_packing), and the
ops' meaning written as plain per-row loops, shared by the CPU tests and the GPU tests (tests/gpu/)."""

from __future__ import annotations

import torch

KINDS = ("right", "left", "none", "empty", "holes", "mixed")


def random_mask(kind: str, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """An int64 [rows, cols] 0/1 mask: right / left padding, no padding, all padding, random holes, or a row of
    each kind."""
    if kind == "mixed":
        return torch.cat([random_mask(KINDS[r % 5], 1, cols, generator) for r in range(rows)]) if rows else (
            torch.zeros(0, cols, dtype=torch.int64))
    if kind == "holes":
        return torch.randint(0, 2, (rows, cols), generator=generator)
    lengths = torch.randint(0, cols + 1, (rows,), generator=generator)
    if kind == "none":
        lengths.fill_(cols)
    elif kind == "empty":
        lengths.zero_()
    pos = torch.arange(cols).view(1, -1)
    real = pos < lengths.view(-1, 1) if kind == "right" else pos >= cols - lengths.view(-1, 1)
    return real.to(torch.int64)


def runs_by_loop(mask: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """padding_runs' (start, end, flags) of a 2-D mask, one row at a time."""
    starts, ends, contiguous, right = [], [], True, True
    for row in (mask != 0).tolist():
        real = [j for j, v in enumerate(row) if v]
        start, end = (real[0], real[-1] + 1) if real else (0, 0)
        one_run = len(real) == end - start
        starts.append(start)
        ends.append(end)
        contiguous &= one_run
        right &= one_run and start == 0
    full = bool((mask != 0).all())
    return starts, ends, [int(contiguous), int(full), int(right)]


def in_place_by_loop(start: list[int], end: list[int], seq_len: int) -> tuple[list[int], list[list[bool]]]:
    """in_place_packing's (cu_seqlens, real) of runs [start, end), one row at a time."""
    cu, real = [], []
    for b, (s, e) in enumerate(zip(start, end)):
        s = min(max(s, 0), seq_len)
        e = max(min(max(e, 0), seq_len), s)
        cu += [b * seq_len, b * seq_len + s, b * seq_len + e]
        real.append([s <= p < e for p in range(seq_len)])
    return cu + [len(start) * seq_len], real
