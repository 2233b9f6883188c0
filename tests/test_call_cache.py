"""call_cache.PreparedConfigs: HF's `_prepare_generation_config` kept per call form on an accelerated model. Every
answer must equal a fresh call of HF's own function, each call must get its own copy, and any change to the configs
it reads must be seen by the next call."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, GPT2LMHeadModel
from transformers.generation.utils import GenerationMixin

import eet_hf

from .helpers import gpt2_config, padded_batch, pair

HF_PREPARE = GenerationMixin._prepare_generation_config

CALL_FORMS = [
    {},
    {"max_new_tokens": 5},
    {"max_new_tokens": 3, "do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
    {"max_new_tokens": 4, "eos_token_id": [2, 7], "pad_token_id": 0, "min_new_tokens": 2},
    {"max_new_tokens": 4, "return_dict_in_generate": True, "output_scores": True, "output_logits": True},
    {"max_new_tokens": 4, "output_attentions": True, "output_hidden_states": True, "return_dict_in_generate": True},
    {"max_length": 12, "use_cache": True, "logits_to_keep": 1},
]


@pytest.fixture
def model():
    model, _ = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    return model


def _inputs():
    ids, mask = padded_batch(2, 6, [6, 3], "left")
    return {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}, ids


def _assert_same(got, expected):
    (config, model_kwargs), (config_ref, model_kwargs_ref) = got, expected
    assert type(config) is type(config_ref) and vars(config) == vars(config_ref)
    assert list(model_kwargs) == list(model_kwargs_ref)
    for key, value in model_kwargs.items():
        assert value is model_kwargs_ref[key] if isinstance(value, torch.Tensor) else value == model_kwargs_ref[key]


def _counting(model, monkeypatch) -> list[int]:
    calls = [0]
    prepared = model.__dict__["_eet_decode_engine"].prepared

    def counted(*args, **kwargs):
        calls[0] += 1
        return HF_PREPARE(*args, **kwargs)

    monkeypatch.setattr(prepared, "_prepare", counted)
    return calls


@pytest.mark.parametrize("form", CALL_FORMS, ids=[",".join(f) or "none" for f in CALL_FORMS])
@pytest.mark.parametrize("explicit", [False, True], ids=["model-config", "explicit-config"])
def test_cached_answer_equals_hf_on_every_call(model, monkeypatch, form, explicit):
    calls = _counting(model, monkeypatch)
    tensors, _ = _inputs()
    config = GenerationConfig(max_new_tokens=9, do_sample=False) if explicit else None
    kwargs = {**form, **tensors}
    for _ in range(3):
        _assert_same(model._prepare_generation_config(config, **kwargs), HF_PREPARE(model, config, **kwargs))
    assert calls[0] == 1  # HF's function ran once for the three calls of one form


def test_each_call_gets_its_own_copy(model):
    kwargs = {"max_new_tokens": 4, "eos_token_id": [2, 7]}
    first, _ = model._prepare_generation_config(None, **kwargs)
    first.max_length = 99
    first.eos_token_id.append(5)
    first._pad_token_tensor = torch.tensor(0)
    second, _ = model._prepare_generation_config(None, **kwargs)
    assert second is not first
    assert vars(second) == vars(HF_PREPARE(model, None, **kwargs)[0])


def test_tensor_inputs_come_from_each_call(model):
    tensors, _ = _inputs()
    model._prepare_generation_config(None, max_new_tokens=3, **tensors)
    other = {k: v.clone() for k, v in tensors.items()}
    _, model_kwargs = model._prepare_generation_config(None, max_new_tokens=3, **other)
    assert all(model_kwargs[k] is other[k] for k in other)


@pytest.mark.parametrize("change", ["attribute", "list-in-place", "model-config", "explicit-in-place"])
def test_config_changes_are_seen_by_the_next_call(model, monkeypatch, change):
    calls = _counting(model, monkeypatch)
    explicit = GenerationConfig(max_new_tokens=5, eos_token_id=[2])
    config = explicit if change == "explicit-in-place" else None
    model.generation_config.eos_token_id = [2]
    model._prepare_generation_config(config, max_new_tokens=4)
    if change == "attribute":
        model.generation_config.temperature = 0.5
        model.generation_config.do_sample = True
    elif change == "list-in-place":
        model.generation_config.eos_token_id.append(9)
    elif change == "model-config":
        model.config.output_hidden_states = True
    else:
        explicit.eos_token_id.append(9)
    got = model._prepare_generation_config(config, max_new_tokens=4)
    assert calls[0] == 2
    _assert_same(got, HF_PREPARE(model, config, max_new_tokens=4))


def test_object_arguments_are_not_cached(model, monkeypatch):
    calls = _counting(model, monkeypatch)
    for _ in range(2):
        model._prepare_generation_config(None, max_new_tokens=3, custom_thing=object())
    assert calls[0] == 2


def test_hf_errors_reach_every_call(model):
    # A value HF refuses (a negative max_new_tokens fails GenerationConfig's validation): raised on every call, never
    # kept as an answer.
    for _ in range(2):
        with pytest.raises(ValueError):
            HF_PREPARE(model, None, max_new_tokens=-1)
        with pytest.raises(ValueError):
            model._prepare_generation_config(None, max_new_tokens=-1)


def test_generate_prepares_once_per_call_form_and_matches_hf(model, monkeypatch):
    calls = _counting(model, monkeypatch)
    ref = pair(GPT2LMHeadModel, gpt2_config())[1]
    ref.load_state_dict(model.state_dict())
    tensors, ids = _inputs()
    for _ in range(3):
        got = model.generate(ids, attention_mask=tensors["attention_mask"], max_new_tokens=4, do_sample=False)
        expected = ref.generate(ids, attention_mask=tensors["attention_mask"], max_new_tokens=4, do_sample=False)
        assert torch.equal(got, expected)
    assert calls[0] == 1


def test_restore_removes_the_cached_preparation(model):
    assert "_prepare_generation_config" in model.__dict__
    eet_hf.restore(model)
    assert "_prepare_generation_config" not in model.__dict__


def test_an_answer_holding_new_objects_is_asked_once_per_call_and_never_kept():
    """A class's own preparation that puts a new object into the model kwargs (HF's never does): each call asks it
    once, gets that call's object, and nothing is kept for the next call."""
    from types import SimpleNamespace

    from eet_hf.engine.call_cache import PreparedConfigs

    calls = []

    def prepare(model, config, **kwargs):
        calls.append(object())
        return GenerationConfig(max_new_tokens=kwargs["max_new_tokens"]), {"made": calls[-1]}

    cache = PreparedConfigs(prepare)
    model = SimpleNamespace(generation_config=GenerationConfig(), config=SimpleNamespace(a=1))
    for n in range(1, 3):
        config, model_kwargs = cache.prepare(model, None, {"max_new_tokens": 4})
        assert len(calls) == n and model_kwargs["made"] is calls[-1] and config.max_new_tokens == 4
