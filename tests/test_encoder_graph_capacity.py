"""Whole-model CUDA graphs that pack to a token capacity (eet_hf/encoder/model_graphs.py, opt-in through
read_min_tokens: by default calls above graphs.MODEL_MAX_TOKENS), on CPU with tests/test_encoder_model_graphs.py's fake capture backend. The real capture runs in
tests/gpu/test_encoder_model_graphs_cuda.py."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertModel

import eet_hf
import eet_hf.encoder.packed as packed
from eet_hf.encoder import graphs, model_graphs

from .helpers import bert_config, pair
from .test_encoder_model_graphs import _compare, _graphed, _inputs


def test_large_calls_read_the_mask_first_and_pack_to_a_capacity(monkeypatch):
    """At >= read_min_tokens: one host read before the replay picks the packed rows (real tokens rounded up to an
    eighth of the batch, part of the key) and sends a left-padded call to the eager forward without a replay."""
    model, ref, cache = _graphed(BertModel, read_min_tokens=32)
    rows = []
    original = packed.layer_forward
    monkeypatch.setattr(packed, "layer_forward", lambda layer, x, packing: rows.append(x.shape[0]) or
                        original(layer, x, packing))
    # batch 4 x 8 = 32 padded tokens, capacities in steps of 4: (lengths, side, captures, replays, fallbacks)
    calls = [([8, 4, 4, 2], "right", 0, 0, 0),  # 18 tokens -> capacity 20: first sight, eager (18 rows)
             ([8, 5, 3, 3], "right", 1, 1, 0),  # 19 -> 20: captured and replayed
             ([8, 6, 2, 1], "right", 1, 2, 0),  # 17 -> 20: replayed
             ([8, 6, 2, 1], "left", 1, 2, 1),  # not right-padded: eager, no replay
             ([8, 1, 1, 1], "right", 1, 2, 1)]  # 11 -> 12: another capacity, first sight
    with torch.no_grad():
        for lengths, side, *expected in calls:
            inputs = _inputs(4, 8, lengths, side)
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
            assert [cache.captures, cache.replays, cache.fallbacks] == expected, (lengths, side)
    assert [key[-2] for key in cache._entries] == [20]
    assert 20 in rows and 32 not in rows, rows  # the graph's layers ran on 20 rows, never on all 32
    # Below the threshold nothing is read first: all rows, and the right-padding check after the replay.
    assert cache.precheck(_inputs(2, 8, [8, 3])) is None
    assert cache.precheck(_inputs(4, 8, [8, 3, 3, 3])) == (True, 20)
    assert cache.precheck(_inputs(4, 8, [8, 3, 3, 3], "left")) == (False, 20)
    cache.read_min_tokens = 0  # 0: never read first
    assert cache.precheck(_inputs(4, 8, [8, 3, 3, 3])) is None


@pytest.mark.parametrize("head", [BertModel, BertForSequenceClassification, BertForMaskedLM, BertForPreTraining])
def test_token_budget_by_head_and_read_first_above_the_small_call_budget(head):
    """Heads with small outputs take whole-model graphs up to the encoder graphs' budget; heads with tokens x vocab
    outputs stop at MODEL_MAX_TOKENS. By default exactly the calls above MODEL_MAX_TOKENS read the mask first."""
    model, _ = pair(head, bert_config())
    eet_hf.accelerate(model)
    cache = model.__dict__[model_graphs.ATTR]
    vocab_head = head in (BertForMaskedLM, BertForPreTraining)
    assert cache.max_tokens == (graphs.MODEL_MAX_TOKENS if vocab_head else graphs.MAX_TOKENS)
    assert graphs.MAX_TOKENS > graphs.MODEL_MAX_TOKENS
    assert cache.read_min_tokens == model_graphs.READ_MIN_TOKENS == graphs.MODEL_MAX_TOKENS + 1
    ids = torch.ones(2, graphs.MODEL_MAX_TOKENS // 2, dtype=torch.long)
    assert cache.precheck({"input_ids": ids, "attention_mask": ids}) is None  # small: every row, checked after
    ids = torch.ones(2, graphs.MODEL_MAX_TOKENS // 2 + 1, dtype=torch.long)
    assert cache.precheck({"input_ids": ids, "attention_mask": ids}) == (True, ids.numel())  # large: read first
