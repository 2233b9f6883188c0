"""Padding removal on CPU (eet_hf/encoder/packing.py): packing and unpacking in exact and capacity mode, the
graph capacities and length buckets."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

import eet_hf
from eet_hf.encoder import bucket_for, pack, plan, unpack
from eet_hf.encoder.packing import capacity_for, host_summary

from .helpers import bert_config, padded_batch, pair
from .test_encoder_model_graphs import _as_if_capturing


def _bounds(lengths: list[int], seq_len: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    lengths_t = torch.tensor(lengths, dtype=torch.int32)
    if side == "left":
        return seq_len - lengths_t, torch.full_like(lengths_t, seq_len)
    return torch.zeros_like(lengths_t), lengths_t


@pytest.mark.parametrize("side", ["left", "right"])
def test_exact_pack_unpack_round_trip(side):
    lengths, seq_len = [7, 0, 1, 3, 7], 7
    start, end = _bounds(lengths, seq_len, side)
    x = torch.randn(len(lengths), seq_len, 5)
    total, longest, left = host_summary(start, end, seq_len)
    assert (total, longest, left) == (sum(lengths), 7, side == "left")
    packing = plan(start, end, seq_len, total, longest)
    packed = pack(x, packing)
    real = torch.zeros(len(lengths), seq_len, dtype=torch.bool)
    for b, n in enumerate(lengths):
        real[b, int(start[b]) : int(start[b]) + n] = True
    # Real tokens only, sequence by sequence, in order.
    assert torch.equal(packed, x[real])
    cu = packing.cu_seqlens.tolist()
    assert cu == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packing.rows == cu[-1] == total
    assert torch.equal(unpack(packed, packing), x * real.unsqueeze(-1))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("full", ["capacity", "unpadded"])
def test_in_place_layout_keeps_every_row_and_segments_each_sequence(side, full):
    """Every plan of all batch * seq_len rows (full capacity, or an exact batch without padding) is in place: rows stay
    where they are (pack and unpack are reshapes, no index kernels), and each sequence's real tokens form one segment of
    their own, its padding before and after two more (empty ones allowed), so attention sees exactly the
    sequence and padding rows stay finite."""
    lengths, seq_len = ([7, 0, 1, 3, 7] if full == "capacity" else [7, 7, 7]), 7
    start, end = _bounds(lengths, seq_len, side)
    x = torch.randn(len(lengths), seq_len, 5)
    total = sum(lengths)
    packing = plan(start, end, seq_len) if full == "capacity" else plan(start, end, seq_len, total, seq_len)
    assert packing.index is None and packing.rows == len(lengths) * seq_len
    packed = pack(x, packing)
    assert torch.equal(packed, x.reshape(-1, 5))
    cu = packing.cu_seqlens.tolist()
    assert packing.cu_seqlens.dtype == torch.int32 and cu[0] == 0 and cu[-1] == packing.rows
    assert len(cu) == 3 * len(lengths) + 1 and all(0 <= b - a <= seq_len for a, b in zip(cu[:-1], cu[1:]))
    for b, n in enumerate(lengths):  # segment 3b + 1 is sequence b's real tokens
        first = b * seq_len + int(start[b])
        assert cu[3 * b + 1 : 3 * b + 3] == [first, first + n], (b, cu)
    real = packing.real
    assert real.sum().item() == total
    assert torch.equal(unpack(packed, packing), x * real.unsqueeze(-1))


def test_all_padded_batch_packs_to_nothing():
    start, end = _bounds([0, 0], 4, "right")
    packing = plan(start, end, 4, 0, 0)
    x = torch.randn(2, 4, 3)
    assert pack(x, packing).shape == (0, 3)
    assert torch.equal(unpack(pack(x, packing), packing), torch.zeros(2, 4, 3))


def test_capacity_for_rounds_up_to_eighths_of_the_batch():
    # 64 padded tokens: steps of 8, never below one step, never above the batch.
    assert [capacity_for(n, 64) for n in (0, 1, 16, 17, 33, 48, 49, 64)] == [8, 8, 16, 24, 40, 48, 56, 64]
    assert capacity_for(17, 64, steps=4) == 32 and capacity_for(63, 64, steps=4) == 64
    assert capacity_for(5, 6) == 5 and capacity_for(0, 6) == 1 and capacity_for(0, 0) == 0


@pytest.mark.parametrize("side", ["left", "right"])
def test_capacity_short_of_the_batch_packs_the_real_tokens_and_cuts_padding_segments(side):
    """A graph's packing with fewer rows than batch * seq_len: all real tokens, then padding segments up to
    the capacity; cu_seqlens keeps its length, ends at the capacity and no segment is longer than seq_len."""
    lengths, seq_len = [7, 0, 1, 3, 7], 7
    start, end = _bounds(lengths, seq_len, side)
    x = torch.randn(len(lengths), seq_len, 5)
    total = sum(lengths)
    for capacity in (total, capacity_for(total, 35), 30):
        packing = plan(start, end, seq_len, capacity=capacity)
        packed = pack(x, packing)
        assert packing.rows == capacity and packed.shape == (capacity, 5)
        real = packing.real
        assert torch.equal(packed[:total], x[real])
        cu = packing.cu_seqlens.tolist()
        assert len(cu) == 2 * len(lengths) + 1 and cu[-1] == capacity
        assert all(0 <= b - a <= seq_len for a, b in zip(cu[:-1], cu[1:]))
        assert torch.equal(unpack(packed, packing), x * real.unsqueeze(-1))
    with pytest.raises(ValueError, match="capacity 36"):
        plan(start, end, seq_len, capacity=36)


def test_bucket_for():
    assert [bucket_for(n) for n in (1, 16, 17, 100, 128, 129, 512)] == [16, 16, 32, 128, 128, 256, 512]


@pytest.mark.parametrize("side", ["left", "right"])
def test_full_capacity_layout_through_the_packed_encoder_matches_hf(side):
    """The whole packed encoder on the in-place all-row layout, as a graph capture runs it (no host read, every row),
    against HF: real tokens within the fp32 contract, padding rows zero."""
    model, ref = pair(BertModel, bert_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(3, 9, [9, 4, 1], side)
    with torch.no_grad():
        with _as_if_capturing():
            got = model(ids, attention_mask=mask).last_hidden_state
        want = ref(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (got[real] - want[real]).abs().max().item() <= 1e-4
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))
