"""Token streams to training rows: packing, the short-then-long batch schedule, BERT masking."""

from __future__ import annotations

import torch


def token_stream(tokenizer, docs: list[str], separator: int, prefix: int | None = None) -> list[int]:
    """All docs as one token list, `separator` after each and `prefix` (a BOS id) before each when given
    (no CLS/SEP template: rows are packed later)."""
    stream: list[int] = []
    head = [] if prefix is None else [prefix]
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        stream += head + enc.ids + [separator]
    return stream


def pack(ids: list[int], length: int) -> torch.Tensor:
    """Cut one token stream into [n, length] rows (the ragged tail is dropped)."""
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def phased_batches(
    short_rows: torch.Tensor, long_rows: torch.Tensor, steps: int, long_share: float, tokens_per_step: int, seed: int
):
    """step -> [batch, len] rows: short rows for the first (1 - long_share) of the steps (cheap attention, more
    updates per minute), then full-length rows so every position embedding up to 512 gets trained."""
    gen = torch.Generator().manual_seed(seed)
    orders = {id(r): torch.randperm(len(r), generator=gen).tolist() for r in (short_rows, long_rows)}
    cursor = {id(short_rows): 0, id(long_rows): 0}
    first_long = int(steps * (1 - long_share))

    def batch(step: int) -> torch.Tensor:
        rows = short_rows if step < first_long else long_rows
        n = max(1, tokens_per_step // rows.shape[1])
        order, start = orders[id(rows)], cursor[id(rows)]
        cursor[id(rows)] = start + n
        return rows[[order[(start + j) % len(order)] for j in range(n)]]

    return batch


def mask_tokens(
    x: torch.Tensor, tokenizer, gen: torch.Generator, rate: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `rate` of the non-special tokens; 80% -> [MASK], 10% -> random token, 10% kept."""
    special = torch.tensor(tokenizer.all_special_ids)
    labels = x.clone()
    candidates = ~torch.isin(x, special)
    picked = (torch.rand(x.shape, generator=gen) < rate) & candidates
    labels[~picked] = -100
    inputs = x.clone()
    roll = torch.rand(x.shape, generator=gen)
    inputs[picked & (roll < 0.8)] = tokenizer.mask_token_id
    rand_pos = picked & (roll >= 0.8) & (roll < 0.9)
    # Random replacements never draw a special token (ids 0..4), so no stray [PAD]/[CLS] inside a row.
    low = max(tokenizer.all_special_ids) + 1
    inputs[rand_pos] = torch.randint(low, len(tokenizer), x.shape, generator=gen)[rand_pos]
    return inputs, labels
