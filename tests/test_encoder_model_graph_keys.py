"""What keys a whole-model encoder graph and which calls it takes (eet_hf/encoder/model_graph_keys.py), on CPU: the
accepted call form, the on-device right-padding check and the weights' storage signature. The graphs' lifecycle:
tests/test_encoder_model_graphs.py."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from transformers import BertForMaskedLM

import eet_hf
from eet_hf import patches
from eet_hf.encoder.model_graph_keys import INPUT_NAMES, WeightSignature, plain_inputs, right_padded

from .helpers import bert_config

IDS = torch.zeros(2, 5, dtype=torch.long)
MASK = torch.ones(2, 5, dtype=torch.long)
ACCEPTED = [
    ((IDS,), {}, {"input_ids"}),
    ((IDS,), {"attention_mask": MASK}, {"input_ids", "attention_mask"}),
    ((IDS, MASK, MASK), {}, {"input_ids", "attention_mask", "token_type_ids"}),
    ((), {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": MASK, "position_ids": None,
          "return_dict": True}, {"input_ids", "attention_mask", "token_type_ids"}),
    ((IDS,), {"attention_mask": None, "token_type_ids": None, "return_dict": None}, {"input_ids"}),
]
REFUSED = {
    "labels": ((IDS,), {"labels": IDS}),
    "output_hidden_states": ((IDS,), {"output_hidden_states": True}),
    "output_attentions_false": ((IDS,), {"output_attentions": False}),
    "position_ids": ((IDS,), {"position_ids": IDS}),
    "inputs_embeds": ((), {"inputs_embeds": torch.zeros(2, 5, 8)}),
    "head_mask": ((IDS,), {"head_mask": torch.ones(2)}),
    "return_dict_false": ((IDS,), {"return_dict": False}),
    "return_dict_tensor": ((IDS,), {"return_dict": torch.ones(3)}),
    "four_positional": ((IDS, MASK, MASK, IDS), {}),
    "mask_twice": ((IDS, MASK), {"attention_mask": MASK}),
    "mask_shape": ((IDS,), {"attention_mask": MASK[:, :4]}),
    "mask_device": ((IDS,), {"attention_mask": MASK.to("meta")}),
    "mask_not_tensor": ((IDS,), {"attention_mask": [[1] * 5] * 2}),
    "float_ids": ((torch.zeros(2, 5),), {}),
    "one_dim_ids": ((IDS[0],), {}),
    "no_ids": ((), {"attention_mask": MASK}),
}


@pytest.mark.parametrize("args, kwargs, names", ACCEPTED)
def test_plain_calls_are_accepted(args, kwargs, names):
    inputs = plain_inputs(args, kwargs)
    assert inputs is not None and set(inputs) == names
    assert all(isinstance(t, torch.Tensor) for t in inputs.values())


@pytest.mark.parametrize("case", REFUSED)
def test_other_calls_are_refused(case):
    args, kwargs = REFUSED[case]
    assert plain_inputs(args, kwargs) is None


@pytest.mark.parametrize("family", sorted(patches.encoder_records.RECORDS))
def test_every_graphed_class_takes_the_record_inputs_first(family):
    """Each head a record graphs exists in this transformers version and leads with the record's inputs (in its own
    order, which the installed graphs follow); vocab heads are heads; BERT's order is INPUT_NAMES."""
    record = patches.encoder_records.RECORDS[family]
    assert record.heads and set(record.vocab_heads) <= set(record.heads)
    assert set(record.inputs) <= set(INPUT_NAMES)
    for name in record.heads:
        cls = patches.encoder_match.family_class(record, name)
        assert cls is not None, name
        leading = tuple(inspect.signature(cls.forward).parameters)[1 : 1 + len(record.inputs)]
        assert sorted(leading) == sorted(record.inputs), (name, leading)
        if family == "bert":
            assert leading == INPUT_NAMES, name


def test_inputs_follow_the_given_order():
    """RoBERTa's multiple choice head takes token_type_ids second; DistilBERT takes no token types at all."""
    inputs = plain_inputs((IDS, MASK * 2, MASK), {}, ("input_ids", "token_type_ids", "attention_mask"))
    assert inputs["token_type_ids"] is not None and torch.equal(inputs["token_type_ids"], MASK * 2)
    assert torch.equal(inputs["attention_mask"], MASK)
    names = ("input_ids", "attention_mask")
    assert plain_inputs((IDS, MASK), {}, names) is not None
    assert plain_inputs((IDS, MASK, MASK), {}, names) is None
    assert plain_inputs((IDS,), {"token_type_ids": MASK}, names) is None


@pytest.mark.parametrize("rows, expected", [
    ([[1, 1, 1]], True), ([[1, 1, 0], [1, 0, 0]], True), ([[0, 0, 0], [1, 1, 1]], True),
    ([[0, 1, 1]], False), ([[1, 0, 1]], False), ([[1, 1, 1], [0, 0, 1]], False), ([[1]], True),
])
def test_right_padded(rows, expected):
    mask = torch.tensor(rows)
    assert bool(right_padded(mask)) is expected
    assert bool(right_padded(mask.bool())) is expected
    assert bool(right_padded(mask.view(1, *mask.shape))) is expected  # multiple choice: [batch, choices, seq]


def _replace_dense(model):
    new = nn.Linear(64, 64)  # built before the baseline: only the replacement itself may change the signature
    return lambda: setattr(model.cls.predictions.transform, "dense", new)


WEIGHT_CHANGES = {
    "double": lambda m: m.double,
    "load_state_dict_assign": lambda m: lambda: m.load_state_dict(
        {k: v.clone() for k, v in m.state_dict().items()}, assign=True),
    "replaced_submodule": _replace_dense,
    "data_swap": lambda m: lambda: setattr(m.bert.embeddings.LayerNorm.weight, "data", torch.ones(64)),
    "bias_set_to_none": lambda m: lambda: setattr(m.cls.predictions.transform.dense, "bias", None),
    "bias_none_in_place": lambda m: lambda: m.cls.predictions.transform.dense._parameters.update(bias=None),
}


@pytest.mark.parametrize("case", WEIGHT_CHANGES)
def test_weight_signature_follows_storage(case):
    model = eet_hf.accelerate(BertForMaskedLM(bert_config()).eval())
    signature = WeightSignature()
    change = WEIGHT_CHANGES[case](model)
    before = signature(model)
    assert signature(model) == before
    change()
    assert signature(model) != before
