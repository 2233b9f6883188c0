"""Whole-model CUDA graphs for small BERT batches (eet_hf/encoder/model_graphs.py), on CPU: which calls take a
graph, what keys a graph, and the fallbacks — with a fake backend that behaves like a capture (eet's mask
function and packed encoder assume right padding while "capturing", replays write into the same output tensors).
The real capture runs in tests/gpu/test_encoder_model_graphs_cuda.py."""

from __future__ import annotations

import contextlib
import copy
import inspect

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLMHeadModel,
    BertModel,
)

import eet_hf
import eet_hf.attention as eet_attention
import eet_hf.encoder.packed as packed
from eet_hf.encoder import graphs, model_graphs
from eet_hf.encoder.model_graphs import ModelGraphs

from .helpers import assert_close, bert_config, padded_batch, pair

FP32_ATOL = 1e-4  # the project's fp32 logits contract
LABEL = "<model>: whole-model CUDA graphs"


@contextlib.contextmanager
def _as_if_capturing():
    """eet's mask function and packed encoder take their capture-time path: no host read, right padding assumed."""
    saved = eet_attention._is_compiling, packed._is_compiling
    eet_attention._is_compiling = packed._is_compiling = lambda: True
    try:
        yield
    finally:
        eet_attention._is_compiling, packed._is_compiling = saved


def _copy_into(static, fresh) -> None:
    out, ok = static
    new_out, new_ok = fresh
    assert out.keys() == new_out.keys()
    for name in out:
        out[name].copy_(new_out[name])
    if ok is not None:
        ok.copy_(new_ok)


class FakeGraphs:
    """CPU stand-in for CudaGraphBackend: a warm-up run, then `fn` under capture semantics; replay() reruns it
    (on the static inputs the caller copied in) and writes the results into the captured output tensors."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def supports(self, device: torch.device) -> bool:
        return True

    def capture(self, fn, device):
        self.calls += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        fn()  # the warm-up runs outside the capture
        with _as_if_capturing():
            outputs = fn()

        def replay() -> None:
            with _as_if_capturing():
                fresh = fn()
            with torch.inference_mode():  # a graph writes its outputs whatever mode they were made in
                _copy_into(outputs, fresh)

        return replay, outputs


def _graphed(head, fake: FakeGraphs | None = None, **cache_options):
    model, ref = pair(head, bert_config())
    eet_hf.accelerate(model)
    cache = ModelGraphs(fake or FakeGraphs(), **cache_options)
    model.__dict__[model_graphs.ATTR] = cache
    return model, ref, cache


def _inputs(batch: int, seq: int, lengths: list[int], side: str = "right", choices: int | None = None):
    ids, mask = padded_batch(batch, seq, lengths, side)
    types = (torch.arange(seq) >= seq // 2).long().expand(batch, seq) * mask
    if choices:  # BertForMultipleChoice: [batch, choices, seq]
        ids, mask, types = (t.view(batch // choices, choices, seq) for t in (ids, mask, types))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _compare(out, expected, mask):
    """Every tensor field of HF's output within FP32_ATOL; [batch, seq, ...] fields on real tokens only."""
    assert set(out.keys()) == set(expected.keys()), (sorted(out.keys()), sorted(expected.keys()))
    fields = [k for k, v in expected.items() if isinstance(v, torch.Tensor)]
    assert fields
    flat = mask.reshape(-1, mask.shape[-1])
    for key in fields:
        value = expected[key]
        real = None
        if value.dim() >= 2 and value.shape[:2] == flat.shape:
            real = flat.bool().view(*flat.shape, *([1] * (value.dim() - 2)))
        assert_close(out[key], value, FP32_ATOL, where=real)


# ------------------------------------------------------------------------------------------------ routing


def test_key_composition():
    model, _, cache = _graphed(BertForMaskedLM)
    ids, mask = padded_batch(2, 6, [6, 3], "right")
    base = cache.key(model, {"input_ids": ids, "attention_mask": mask})
    assert cache.key(model, {"input_ids": ids.clone(), "attention_mask": mask.clone()}) == base  # values: no
    others = [
        {"input_ids": ids[:, :5], "attention_mask": mask[:, :5]},  # shape
        {"input_ids": ids[:1], "attention_mask": mask[:1]},
        {"input_ids": ids.int(), "attention_mask": mask},  # dtypes
        {"input_ids": ids, "attention_mask": mask.bool()},
        {"input_ids": ids},  # which optional inputs were given
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": mask},
    ]
    keys = [cache.key(model, inputs) for inputs in others]
    assert len(set(keys + [base])) == len(others) + 1


# ------------------------------------------------------------------------------------------------ lifecycle

HEADS = [BertModel, BertForMaskedLM, BertForSequenceClassification, BertForQuestionAnswering, BertForPreTraining,
         BertForMultipleChoice]


@pytest.mark.parametrize("head", HEADS, ids=lambda c: c.__name__)
def test_eager_capture_replay_match_hf(head):
    model, ref, cache = _graphed(head)
    choices = 2 if head is BertForMultipleChoice else None
    runs = [[9, 4, 1, 9], [2, 9, 9, 5], [9, 9, 9, 9]]  # fresh values and lengths every call, one shape
    with torch.no_grad():
        for i, lengths in enumerate(runs):
            inputs = _inputs(4, 9, lengths, choices=choices)
            out = model(**inputs)
            _compare(out, ref(**inputs), inputs["attention_mask"])
            assert type(out) is type(ref(**inputs))
            assert (cache.captures, cache.replays) == ([0, 1, 1][i], [0, 1, 2][i])
    assert cache.fallbacks == 0 and len(cache) == 1
    # Outputs are rebuilt by setting fields directly (the dataclass constructor is slow), checked equal to it.
    assert next(iter(cache._entries.values())).build.__name__ == "direct"


def test_returned_outputs_are_copies_of_the_static_ones():
    model, ref, cache = _graphed(BertModel)
    with torch.no_grad():
        for lengths in ([7, 3], [5, 7]):
            inputs = _inputs(2, 7, lengths)
            model(**inputs)
        kept = model(**inputs)
        expected = ref(**inputs)
        entry = next(iter(cache._entries.values()))
        for name, static in entry.outputs:
            assert static.data_ptr() != kept[name].data_ptr(), name
            static.fill_(float("nan"))  # poison: the next replay must rewrite every element
        _compare(kept, expected, inputs["attention_mask"])
        inputs = _inputs(2, 7, [1, 6])
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert cache.replays == 3


@pytest.mark.parametrize("bad", ["left", "holes"])
def test_a_mask_the_graph_cannot_express_runs_the_eager_forward(bad):
    model, ref, cache = _graphed(BertModel)
    with torch.no_grad():
        for lengths in ([8, 5, 2], [3, 8, 8]):
            inputs = _inputs(3, 8, lengths)
            model(**inputs)
        assert cache.captures == 1
        inputs = _inputs(3, 8, [8, 5, 2], side="left" if bad == "left" else "right")
        if bad == "holes":
            inputs["attention_mask"][1, 2] = 0
            inputs["attention_mask"][2, 0:2] = torch.tensor([1, 0])
            inputs["attention_mask"][2, 3] = 1
        expected = ref(**inputs)
        out = model(**inputs)
        _compare(out, expected, inputs["attention_mask"])
        assert (cache.replays, cache.fallbacks) == (2, 1)
        # The replay itself (right padding assumed) was wrong for this mask: the fallback was needed.
        static = next(iter(cache._entries.values())).outputs
        assert any((value - expected[name]).abs().max() > 1e-3 for name, value in static)
        inputs = _inputs(3, 8, [1, 8, 4])  # right padding again: the graph serves it
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert (cache.replays, cache.fallbacks, cache.captures) == (3, 1, 1)


def test_capture_waits_for_a_right_padded_call():
    model, ref, cache = _graphed(BertForSequenceClassification)
    with torch.no_grad():
        for side, captures in (("right", 0), ("left", 0), ("right", 1)):
            inputs = _inputs(2, 6, [6, 3], side)
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
            assert cache.captures == captures, side


def test_calls_without_mask_or_token_types():
    model, ref, cache = _graphed(BertForMaskedLM)
    with torch.no_grad():
        for _ in range(3):
            ids = torch.randint(7, 100, (2, 5))
            _compare(model(ids), ref(ids), torch.ones_like(ids))
    entry = next(iter(cache._entries.values()))
    assert entry.ok is None and set(entry.inputs) == {"input_ids"}
    assert (cache.captures, cache.replays) == (1, 2)


BYPASS = {
    "output_hidden_states": lambda inputs: {"output_hidden_states": True},
    # -100 at padding: eet's logits there are not HF's (padding is never computed; README)
    "labels": lambda inputs: {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)},
    "position_ids": lambda inputs: {"position_ids": torch.arange(6).expand(2, 6)},
    "return_dict_false": lambda inputs: {"return_dict": False},
}


@pytest.mark.parametrize("case", BYPASS)
def test_other_calls_bypass_the_graphs(case):
    model, ref, cache = _graphed(BertForMaskedLM)
    inputs = _inputs(2, 6, [6, 4])
    with torch.no_grad():
        for _ in range(3):
            extra = BYPASS[case](inputs)
            got, expected = model(**inputs, **extra), ref(**inputs, **extra)
    if case == "return_dict_false":
        assert isinstance(got, tuple)
        assert_close(got[0], expected[0], FP32_ATOL, where=inputs["attention_mask"].bool().unsqueeze(-1))
    else:
        _compare(got, expected, inputs["attention_mask"])
    assert (cache.captures, cache.replays, len(cache._seen)) == (0, 0, 0)


INELIGIBLE = {
    "training": lambda m, c: m.train(),
    "grad_enabled": None,
    "too_many_tokens": lambda m, c: setattr(c, "max_tokens", 11),
    "switch_off": lambda m, c: setattr(model_graphs, "ENABLED", False),
    "encoder_graphs_off": lambda m, c: setattr(graphs, "ENABLED", False),
    "config_hidden_states": lambda m, c: setattr(m.config, "output_hidden_states", True),
}
SAME_IN_HF = ("config_hidden_states",)  # a change HF's model gets too, for the comparison


@pytest.mark.parametrize("case", INELIGIBLE)
def test_ineligible_models_and_modes_run_their_own_forward(case, monkeypatch):
    monkeypatch.setattr(model_graphs, "ENABLED", True)
    monkeypatch.setattr(graphs, "ENABLED", True)
    model, ref, cache = _graphed(BertModel)
    if INELIGIBLE[case] is not None:
        INELIGIBLE[case](model, cache)
    if case in SAME_IN_HF:
        INELIGIBLE[case](ref, None)
    grad = torch.enable_grad() if case == "grad_enabled" else torch.no_grad()
    inputs = _inputs(2, 6, [6, 4])
    with grad:
        for _ in range(3):
            out = model(**inputs)
    if case != "training":  # dropout is active in training mode: nothing to compare with
        _compare(out, ref(**inputs), inputs["attention_mask"])
    assert (cache.captures, cache.replays, len(cache._seen)) == (0, 0, 0)


def test_config_changes_after_capture_are_seen():
    model, ref, cache = _graphed(BertForTokenClassification)
    with torch.no_grad():
        for _ in range(2):
            model(**_inputs(2, 6, [6, 2]))
        for flag, replays in ((True, 1), (False, 2)):
            model.config.output_hidden_states = ref.config.output_hidden_states = flag
            inputs = _inputs(2, 6, [3, 6])
            out = model(**inputs)
            _compare(out, ref(**inputs), inputs["attention_mask"])
            assert ("hidden_states" in out) is flag and cache.replays == replays
        model.config._attn_implementation = "eager"  # another attention: another graph
        model(**inputs)
    assert cache.replays == 2


@pytest.mark.parametrize("move", ["double", "load_state_dict_assign"])
def test_weights_moved_after_capture_never_replay_a_stale_graph(move):
    model, ref, cache = _graphed(BertForMaskedLM)
    with torch.no_grad():
        for _ in range(2):
            inputs = _inputs(2, 6, [6, 3])
            model(**inputs)
        assert cache.captures == 1
        if move == "double":
            model.double()
            ref.double()
        else:
            fresh = BertForMaskedLM(bert_config()).eval()  # other weights, other storages
            model.load_state_dict(fresh.state_dict(), assign=True)
            ref.load_state_dict(fresh.state_dict())
        replays = cache.replays
        inputs = _inputs(2, 6, [2, 6])
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
        assert cache.replays == replays, "a graph captured on the old weights replayed"
        assert len(cache) == 0, "graphs of the old weights are kept (memory)"
        for _ in range(3):
            inputs = _inputs(2, 6, [6, 5])
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert cache.captures == 2 and cache.replays > replays


def test_failed_capture_leaves_the_shape_eager():
    fake = FakeGraphs(fail=True)
    model, ref, cache = _graphed(BertModel, fake)
    with torch.no_grad():
        for _ in range(4):
            inputs = _inputs(2, 6, [6, 1])
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert fake.calls == 1 and (cache.captures, cache.replays) == (0, 0)


# ------------------------------------------------------------------------------------------------ install


def test_installed_listed_and_restored():
    model, ref = pair(BertForSequenceClassification, bert_config())
    eet_hf.accelerate(model)
    assert LABEL in eet_hf.explain(model).cuda_only  # installed; counted as accelerated only on CUDA
    assert isinstance(model.__dict__[model_graphs.ATTR], ModelGraphs)
    assert inspect.unwrap(model.__dict__["forward"].__func__) is model_graphs.graphed_forward
    eet_hf.restore(model)
    assert "forward" not in model.__dict__ and model_graphs.ATTR not in model.__dict__
    inputs = _inputs(2, 6, [6, 3])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)


@pytest.mark.parametrize("kind", ["decoder", "attention_off"])
def test_not_installed_without_the_packed_encoder(kind):
    config = bert_config(is_decoder=True) if kind == "decoder" else bert_config()
    model = (BertLMHeadModel if kind == "decoder" else BertForMaskedLM)(config).eval()
    eet_hf.accelerate(model, attention=kind != "attention_off")
    assert model_graphs.ATTR not in model.__dict__
    assert inspect.unwrap(model.forward) is not model_graphs.graphed_forward
    report = eet_hf.explain(model)
    assert LABEL not in report.accelerated and LABEL not in report.cuda_only


def test_deepcopy_starts_with_empty_graphs():
    model, ref, cache = _graphed(BertModel)
    inputs = _inputs(2, 5, [5, 2])
    with torch.no_grad():
        for _ in range(2):
            model(**inputs)
        clone = copy.deepcopy(model)  # accelerated again from the plain copy (eet_hf/copies.py): its own graphs
        copied = clone.__dict__[model_graphs.ATTR]
        assert copied is not cache and len(copied) == 0 and len(cache) == 1
        assert clone.__dict__["forward"].__self__ is clone
        clone.__dict__[model_graphs.ATTR] = copied = ModelGraphs(FakeGraphs())
        for _ in range(3):
            _compare(clone(**inputs), ref(**inputs), inputs["attention_mask"])
    assert copied.captures == 1 and cache.captures == 1


@pytest.mark.parametrize("modes", [("inference", "no_grad"), ("no_grad", "inference")], ids="-then-".join)
def test_capture_and_replay_in_either_autograd_off_mode(modes):
    """Static buffers made under inference_mode stay writable under no_grad and the other way round."""
    model, ref, cache = _graphed(BertForQuestionAnswering)
    contexts = {"inference": torch.inference_mode, "no_grad": torch.no_grad}
    for step, mode in enumerate((modes[0], modes[0], modes[1], modes[1])):
        inputs = _inputs(2, 6, [6, step + 1])
        with contexts[mode]():
            out = model(**inputs)
        with torch.no_grad():
            _compare(out, ref(**inputs), inputs["attention_mask"])
    assert (cache.captures, cache.replays) == (1, 3)
