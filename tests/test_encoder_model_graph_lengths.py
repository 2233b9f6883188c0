"""Whole-model graphs shared by the lengths of a bucket (eet_hf/encoder/model_graphs.py): a call padded up to a
multiple of 16 tokens per row and its sequence-shaped outputs cut back, on CPU with the fake capture backend of
tests/test_encoder_model_graphs.py."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaConfig,
    RobertaModel,
)

import eet_hf
from eet_hf.encoder import model_graphs
from eet_hf.encoder.model_graph_keys import padded_length, sequence_fields
from eet_hf.encoder.model_graphs import ModelGraphs

from .helpers import pair
from .test_encoder_model_graphs import FakeGraphs, _compare, _graphed, _inputs


def _bucketed(head, **options):
    return _graphed(head, seq_fields=sequence_fields(head.__name__), max_positions=64, **options)


def test_sequence_fields_by_head():
    assert sequence_fields("BertModel") == {"last_hidden_state"}
    assert sequence_fields("RobertaModel") == {"last_hidden_state"}
    assert sequence_fields("BertLMHeadModel") == {"logits"}  # ends with "Model" too: its logits are per token
    assert sequence_fields("DistilBertForMaskedLM") == {"logits"}
    assert sequence_fields("ElectraForQuestionAnswering") == {"start_logits", "end_logits"}
    assert sequence_fields("BertForSequenceClassification") == frozenset()
    assert sequence_fields("BertForPreTraining") is None  # not listed: exact shapes


def test_padded_length():
    assert [padded_length(n, 16, 512) for n in (1, 16, 17, 130, 512)] == [16, 16, 32, 144, 512]
    assert padded_length(500, 16, 510) == 500  # 512 would pass the model's positions: the call's own length


@pytest.mark.parametrize("head", [BertModel, BertForMaskedLM, BertForSequenceClassification,
                                  BertForTokenClassification, BertForQuestionAnswering, BertForMultipleChoice],
                         ids=lambda c: c.__name__)
def test_lengths_of_a_bucket_share_one_graph(head):
    """Lengths 5..12 take one graph of 16 tokens per row; every call's outputs have its own shape and HF's values.
    A shorter call after a longer one finds the longer call's tail in the static inputs: it must be padding again
    (a stale mask tail would let real tokens attend to it)."""
    model, ref, cache = _bucketed(head)
    choices = 2 if head is BertForMultipleChoice else None
    with torch.no_grad():
        for seq in (9, 12, 5, 9, 7):
            inputs = _inputs(4, seq, [seq, seq - 1, 2, seq], choices=choices)
            out, expected = model(**inputs), ref(**inputs)
            assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in expected.items()}
            _compare(out, expected, inputs["attention_mask"])
    assert (cache.captures, cache.replays, len(cache)) == (1, 4, 1)
    shape = next(iter(cache._entries.values())).inputs["input_ids"].shape
    assert shape[-1] == 16


def test_heads_without_known_fields_take_exact_shapes():
    model, ref, cache = _bucketed(BertForPreTraining)
    with torch.no_grad():
        for seq in (9, 9, 7, 7):
            inputs = _inputs(2, seq, [seq, 3])
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert (cache.captures, len(cache)) == (2, 2)


def test_calls_without_a_mask_and_lengths_past_the_positions_take_exact_shapes():
    model, ref, cache = _graphed(BertModel, seq_fields=sequence_fields("BertModel"), max_positions=20)
    with torch.no_grad():
        for _ in range(2):
            ids = torch.randint(7, 100, (2, 5))
            _compare(model(ids), ref(ids), torch.ones_like(ids))
            inputs = _inputs(2, 18, [18, 4])  # 32 would pass max_positions 20
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert sorted(entry.inputs["input_ids"].shape[-1] for entry in cache._entries.values()) == [5, 18]


def test_declared_fields_are_checked_against_the_outputs():
    """A head whose outputs do not have the declared sequence fields: no graph of a padded length, never a wrongly
    cut output; its calls keep HF's answer."""
    model, ref, cache = _graphed(BertForTokenClassification, seq_fields=frozenset({"last_hidden_state"}),
                                 max_positions=64)
    with torch.no_grad():
        for seq in (9, 9, 9, 7, 7):
            inputs = _inputs(2, seq, [seq, 3])
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert cache.seq_fields is None
    assert all(entry.inputs["input_ids"].shape[-1] == 7 for entry in cache._entries.values())


def test_roberta_pads_with_its_padding_index():
    """RoBERTa counts positions over the tokens that are not its pad id (1): the padded tail gets the padding
    position, never one past the table."""
    config = RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           vocab_size=100, max_position_embeddings=34, pad_token_id=1)
    model, ref = pair(RobertaModel, config)
    eet_hf.accelerate(model)
    installed = model.__dict__.get(model_graphs.ATTR)
    assert installed is not None and installed.fill["input_ids"] == 1 and installed.max_positions == 34
    cache = ModelGraphs(FakeGraphs(), input_names=installed.input_names, seq_fields=installed.seq_fields,
                        pad_id=1, max_positions=34)
    model.__dict__[model_graphs.ATTR] = cache
    with torch.no_grad():
        for seq in (30, 30, 25):  # 32 tokens per row: positions up to 1 + 30 with the pad id, in the table of 34
            inputs = _inputs(2, seq, [seq, 4])
            inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 1)
            inputs["token_type_ids"].zero_()
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert (cache.captures, cache.replays) == (1, 2)
