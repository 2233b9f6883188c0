"""What identifies a whole-model graph and a call it may take (model_graphs.py): the accepted call form, the
on-device right-padding check, the weights' storage signature, the config view, and rebuilding HF's output class
from the graph's static outputs cheaply.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from eet_hf import ops
from eet_hf.module_walk import TensorDicts

# The inputs a graphed call may pass, in the leading positional order of BERT's heads; a family's record says which
# of them its models take (DistilBERT: no token types) and each head's signature their order (RoBERTa's multiple
# choice head takes token_type_ids second).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def plain_inputs(args: tuple, kwargs: dict[str, Any],
                 names: tuple[str, ...] = INPUT_NAMES) -> dict[str, torch.Tensor] | None:
    """{"input_ids", and the other `names` when given} for a call of the plain form, else None.

    Accepted: up to len(names) positional tensors in `names` order (the forward's own leading parameters) or those
    names as keywords; position_ids=None; return_dict None or True. The other inputs must have input_ids' shape and
    device.
    """
    if len(args) > len(names):
        return None
    inputs: dict[str, Any] = dict(zip(names, args))
    for name, value in kwargs.items():
        if name in names and name not in inputs:
            inputs[name] = value
        elif (name == "position_ids" and value is None) or (name == "return_dict" and (value is None or value is True)):
            continue  # the defaults
        else:
            return None
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() < 2:
        return None
    for name in (n for n in names if n != "input_ids"):
        value = inputs.get(name)
        if value is None:
            inputs.pop(name, None)
        elif not isinstance(value, torch.Tensor) or value.shape != ids.shape or value.device != ids.device:
            return None
    return inputs


# Output fields that carry the input's sequence dimension, by head class name suffix, first match wins (the base
# model's "Model" last: BertLMHeadModel ends so too): a call padded to a longer graph length gets them cut back to its
# own length. Heads not listed take exact shapes; a capture checks the list against the outputs (model_graphs.py).
_SEQUENCE_FIELDS = {
    "ForSequenceClassification": frozenset(),
    "ForMultipleChoice": frozenset(),
    "ForTokenClassification": frozenset({"logits"}),
    "ForMaskedLM": frozenset({"logits"}),
    "ForCausalLM": frozenset({"logits"}),
    "LMHeadModel": frozenset({"logits"}),
    "ForQuestionAnswering": frozenset({"start_logits", "end_logits"}),
    "Model": frozenset({"last_hidden_state"}),
}


def sequence_fields(head: str) -> frozenset[str] | None:
    """The output fields of head class `head` with the input's sequence dimension, or None when not known (then a
    graph takes only calls of its exact length)."""
    return next((fields for suffix, fields in _SEQUENCE_FIELDS.items() if head.endswith(suffix)), None)


def padded_length(seq: int, bucket: int, limit: int) -> int:
    """The graph length a call of `seq` tokens per row is padded to: the next multiple of `bucket`, unless that
    passes `limit` (the model's positions), where the call keeps its own length."""
    padded = -(-seq // bucket) * bucket
    return padded if padded <= limit else seq


def fields_match(outputs: ModelOutput, fields: frozenset[str], ids_shape: torch.Size) -> bool:
    """Whether exactly `fields` of a graph's outputs have the leading shape of its (padded) input ids [..., seq]:
    the check that cutting them back along the sequence dimension gives the call's own outputs."""
    dims = len(ids_shape)
    return all((name in fields) == (t.dim() >= dims and t.shape[:dims] == ids_shape) for name, t in outputs.items())


def right_padded(mask: torch.Tensor) -> torch.Tensor:
    """int32 scalar on mask's device, nonzero when every row of mask [..., seq] is one run of nonzeros starting at
    column 0 (right padding, no padding, or an empty row): the masks a capture computes correctly. No host read;
    one kernel on CUDA (eet::padding_runs)."""
    rows = mask.reshape(math.prod(mask.shape[:-1]), mask.shape[-1])
    return ops.padding_runs(rows)[2][2]


_data_ptr = torch.Tensor.data_ptr


class WeightSignature:
    """The address of every parameter and buffer of a model (~0.1 µs per tensor: ~20 µs for bert-base). The
    module tree is walked only after a registration (a module or parameter replaced); each call reads the
    addresses, which change on .to() / .half() / `p.data = ...` / swaps."""

    def __init__(self) -> None:
        self._walk = TensorDicts()
        self._dicts: list[dict] | None = None
        self._has_none = False  # a None entry (e.g. Linear(bias=False)): the slower exact path

    def __call__(self, model: nn.Module) -> tuple[int, ...]:
        dicts = self._walk.dicts(model)
        if dicts is not self._dicts:  # walked again
            self._dicts = dicts
            self._has_none = any(v is None for d in dicts for v in d.values())
        if not self._has_none:
            try:
                return tuple(map(_data_ptr, itertools.chain.from_iterable(map(dict.values, dicts))))
            except TypeError:  # set to None in place, past the registration hooks
                self._has_none = True
        values = itertools.chain.from_iterable(map(dict.values, dicts))
        return tuple(0 if t is None else t.data_ptr() for t in values)


class ConfigView:
    """(whether the model returns plain ModelOutputs, its attention implementation), from its config; re-read only
    when the config's attributes changed (a shallow comparison: unchanged values are the same objects), since an
    HF config attribute read costs ~2 µs in transformers 5.x."""

    def __init__(self) -> None:
        self._snapshot: dict | None = None
        self._value: tuple[bool, Any] = (False, None)

    def __call__(self, config: Any) -> tuple[bool, Any]:
        state = object.__getattribute__(config, "__dict__")  # past HF's own __getattribute__
        try:
            if state == self._snapshot:
                return self._value
        except Exception:  # noqa: BLE001 - a changed value whose == is not a bool (an array): read it again
            pass
        plain = (getattr(config, "return_dict", True) is not False
                 and not getattr(config, "output_hidden_states", False)
                 and not getattr(config, "output_attentions", False))
        self._value = (plain, config._attn_implementation)
        self._snapshot = dict(state)
        return self._value


def _tensor_output(out: Any) -> bool:
    return isinstance(out, ModelOutput) and all(isinstance(v, torch.Tensor) for v in out.values())


OutputBuilder = Callable[[list[tuple[str, torch.Tensor]]], ModelOutput]


def output_builder(template: ModelOutput) -> OutputBuilder:
    """A constructor of template's class from (field, tensor) pairs. The dataclass constructor costs 15-20 µs per
    call in transformers 5.x (__setattr__ and __post_init__ walk the fields), a tenth of a small replayed forward;
    setting the same attributes and keys directly costs 2. The direct one is used only when it builds the same
    object as the constructor for this template (checked here, once per graph)."""
    cls = type(template)
    names = tuple(f.name for f in dataclasses.fields(cls))

    def direct(items: list[tuple[str, torch.Tensor]]) -> ModelOutput:
        out = cls.__new__(cls)
        OrderedDict.__init__(out)
        for name in names:
            object.__setattr__(out, name, None)
        for name, value in items:
            OrderedDict.__setitem__(out, name, value)
            object.__setattr__(out, name, value)
        return out

    def constructor(items: list[tuple[str, torch.Tensor]]) -> ModelOutput:
        return cls(**dict(items))

    items = list(template.items())
    built, reference = direct(items), constructor(items)
    same = (list(built.keys()) == list(reference.keys()) and list(built.__dict__) == list(reference.__dict__)
            and all(built.__dict__[k] is v for k, v in reference.__dict__.items()))
    return direct if same else constructor
