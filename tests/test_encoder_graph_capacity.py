"""Whole-model CUDA graphs that pack to a token capacity (eet_hf/encoder/model_graphs.py, opt-in through
read_min_tokens), on CPU with tests/test_encoder_model_graphs.py's fake capture backend. The real capture runs in
tests/gpu/test_encoder_model_graphs_cuda.py."""

from __future__ import annotations

import torch
from transformers import BertModel

import eet_hf.encoder.bert_forward as bert_forward

from .test_encoder_model_graphs import _compare, _graphed, _inputs


def test_large_calls_read_the_mask_first_and_pack_to_a_capacity(monkeypatch):
    """At >= read_min_tokens: one host read before the replay picks the packed rows (real tokens rounded up to an
    eighth of the batch, part of the key) and sends a left-padded call to the eager forward without a replay."""
    model, ref, cache = _graphed(BertModel, read_min_tokens=32)
    rows = []
    original = bert_forward.layer_forward
    monkeypatch.setattr(bert_forward, "layer_forward", lambda layer, x, packing: rows.append(x.shape[0]) or
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
    cache.read_min_tokens = 0  # the default: never read first
    assert cache.precheck(_inputs(4, 8, [8, 3, 3, 3])) is None
