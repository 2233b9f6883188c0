"""Whole-model graphs for every family with an encoder record, on CPU with the fake capture backend of
test_encoder_model_graphs: capture and replay like HF for keyword and positional calls, lengths of a bucket sharing one
graph with each head's sequence outputs cut back (RoBERTa-style families padding with their own pad id), and calls not
of the plain form bypassing the graphs."""

from __future__ import annotations

import pytest
import torch

import eet_hf
from eet_hf.encoder import model_graphs
from eet_hf.encoder.model_graph_keys import sequence_fields

from .test_encoder_families import FAMILIES, RECORDS, _inputs, _pair
from .test_encoder_model_graphs import FakeGraphs, _compare

GRAPHED = [(family, head) for family in FAMILIES for head in RECORDS[family].heads
           if head.endswith(("Model", "ForSequenceClassification", "ForMultipleChoice"))]


@pytest.mark.parametrize("family, head", GRAPHED, ids=[f"{f}-{h}" for f, h in GRAPHED])
def test_whole_model_graphs_capture_and_replay_like_hf(family, head):
    """With the fake capture backend: eager (first sight), capture + replay, replay, for keyword calls and for
    positional ones in the head's own order (RoBERTa's multiple choice head: input_ids, token_type_ids, mask)."""
    model, ref = _pair(family, head)
    eet_hf.accelerate(model)
    installed = model.__dict__[model_graphs.ATTR]
    cache = model.__dict__[model_graphs.ATTR] = model_graphs.ModelGraphs(
        FakeGraphs(), max_tokens=installed.max_tokens, input_names=installed.input_names)
    choices = 2 if head.endswith("MultipleChoice") else None
    with torch.no_grad():
        for call, lengths in enumerate([[9, 4, 1, 9], [2, 9, 9, 5], [9, 9, 9, 9]]):
            inputs = _inputs(model, lengths, 9, choices=choices)
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
            assert (cache.captures, cache.replays) == ([0, 1, 1][call], [0, 1, 2][call])
        args = [inputs[name] for name in cache.input_names if name in inputs]
        _compare(model(*args), ref(*args), inputs["attention_mask"])
    assert (cache.replays, cache.fallbacks) == (3, 0)


def test_distilbert_calls_with_token_types_bypass_the_graphs():
    """DistilBERT takes no token types: such a call is not of the plain form and runs the model's own forward."""
    model, ref = _pair("distilbert")
    eet_hf.accelerate(model)
    cache = model.__dict__[model_graphs.ATTR] = model_graphs.ModelGraphs(FakeGraphs(), input_names=(
        "input_ids", "attention_mask"))
    inputs = _inputs(model, [6, 3], 6)
    with torch.no_grad():
        for _ in range(3):
            out = model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    _compare(out, ref(**inputs), inputs["attention_mask"])
    assert (cache.captures, cache.replays, len(cache._seen)) == (0, 0, 0)


BUCKETED = [(family, head) for family in FAMILIES for head in RECORDS[family].heads
            if sequence_fields(head) is not None]


@pytest.mark.parametrize("family, head", BUCKETED, ids=[f"{f}-{h}" for f, h in BUCKETED])
def test_lengths_of_a_bucket_share_a_graph_in_every_family(family, head):
    """accelerate() installs each head's sequence fields, the family's pad id and its positions; calls of 5..12 tokens
    per row then take one graph of 16 with each output of the call's own shape and HF's values."""
    model, ref = _pair(family, head)
    eet_hf.accelerate(model)
    installed = model.__dict__[model_graphs.ATTR]
    assert installed.seq_fields == sequence_fields(head)
    assert installed.fill["input_ids"] == model.config.pad_token_id
    assert installed.max_positions == model.config.max_position_embeddings
    cache = model.__dict__[model_graphs.ATTR] = model_graphs.ModelGraphs(
        FakeGraphs(), max_tokens=installed.max_tokens, input_names=installed.input_names,
        seq_fields=installed.seq_fields, pad_id=installed.fill["input_ids"], max_positions=installed.max_positions)
    choices = 2 if head.endswith("MultipleChoice") else None
    with torch.no_grad():
        for seq in (9, 12, 5, 11):
            inputs = _inputs(model, [seq, 3, seq - 1, 1], seq, choices=choices)
            out, expected = model(**inputs), ref(**inputs)
            assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in expected.items()}
            _compare(out, expected, inputs["attention_mask"])
    assert (cache.captures, cache.replays, len(cache)) == (1, 3, 1)
