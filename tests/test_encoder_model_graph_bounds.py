"""The whole-model graphs' LRU bounds (eet_hf/encoder/model_graphs.py): graph count and static bytes, on CPU with the
fake capture backend of tests/test_encoder_model_graphs.py."""

from __future__ import annotations

import torch
from transformers import BertModel

from eet_hf.encoder import model_graphs

from .test_encoder_model_graphs import FakeGraphs, _compare, _graphed, _inputs


def test_graph_count_is_bounded():
    model, ref, cache = _graphed(BertModel, max_graphs=2)
    with torch.no_grad():
        for seq in (5, 6, 7, 5):
            for _ in range(2):
                inputs = _inputs(2, seq, [seq, 2])
                _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
            assert len(cache) <= 2
    assert cache.captures == 4  # 5 was evicted by 7 (least recently used) and captured again


def test_static_bytes_are_bounded_and_the_newest_graph_stays():
    model, ref, cache = _graphed(BertModel)
    with torch.no_grad():
        for _ in range(2):
            model(**_inputs(2, 5, [5, 2]))
        one = cache.static_bytes()
        assert len(cache) == 1 and one > 0
        cache.max_bytes = one + one // 2  # room for one graph of this size, not two
        for seq in (6, 6, 7, 7):
            inputs = _inputs(2, seq, [seq, 2])
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
        assert len(cache) == 1 and cache.static_bytes() <= cache.max_bytes and cache.captures == 3
        cache.max_bytes = 0  # a graph larger than the budget is still kept alone: its own call replays it
        for _ in range(2):
            model(**_inputs(2, 9, [9, 2]))
        assert len(cache) == 1 and cache.captures == cache.replays == 4  # each capturing call replays its graph


def test_sentence_transformers_shape_mix_fits_the_default_bounds():
    """encode() of mixed-length sentences pads each batch to its longest: with lengths padded up to multiples of 16
    and the token capacities of large calls, a few dozen graphs, each replayed on the next encode() instead of being
    recaptured (an 8-graph LRU recaptured all of them every time)."""
    assert model_graphs.ModelGraphs(FakeGraphs()).max_graphs >= 40
