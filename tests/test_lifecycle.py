"""An accelerated model through its life as a library object: deep copies, pickles (torch.save / torch.load),
models built from its config, introspected signatures, and what accelerate/restore/explain say to wrong input.

Every test compares with plain HF models built from the same weights (tests/helpers.pair).
"""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertForMaskedLM,
    BertModel,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)

import eet_hf
from eet_hf import distributed

from .helpers import assert_close, bert_config, gpt2_config, padded_batch, pair

REPO = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def llama_config(**overrides) -> LlamaConfig:
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=100, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**base, **overrides})


# (model class, config factory): a decoder with eet's own adapter and decode loop, an encoder with the packed encoder
# and whole-model graphs, a decoder on the generic adapter; and the bare base models, whose own forward builds masks.
CASES = {
    "gpt2": (GPT2LMHeadModel, gpt2_config),
    "bert": (BertForMaskedLM, bert_config),
    "llama": (LlamaForCausalLM, llama_config),
    "bert-base": (BertModel, bert_config),
    "llama-base": (LlamaModel, llama_config),
}


def _accelerated_pair(case: str, **config_overrides):
    cls, make_config = CASES[case]
    model, ref = pair(cls, make_config(**config_overrides))
    return eet_hf.accelerate(model), ref


def _main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _assert_matches(model, ref) -> None:
    ids, mask = padded_batch(2, 7, [7, 4], "right")
    with torch.no_grad():
        got, expected = _main_output(model(ids, attention_mask=mask)), _main_output(ref(ids, attention_mask=mask))
    # Real tokens only: eet's encoder leaves padding positions at zero (README: BERT padding positions).
    assert_close(got, expected, ATOL, where=mask[..., None])


def _assert_rewired_onto_itself(model) -> None:
    """Every eet forward and generate the model holds is bound to the model's own modules, and every module config
    under it is its own (none shared with another model)."""
    for name, module in model.named_modules():
        for slot in ("forward", "generate"):
            bound = module.__dict__.get(slot)
            if bound is not None:
                assert bound.__self__ is module, f"{name or '<model>'}.{slot} is bound to another module"


def _assert_plain(model) -> None:
    assert "not accelerated" in str(eet_hf.explain(model))
    for name, module in model.named_modules():
        assert not {"forward", "generate"} & set(module.__dict__), f"{name} still holds an eet method"
        assert not [k for k in module.__dict__ if k.startswith("_eet")], f"{name} still holds eet state"


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 3: copy.deepcopy


@pytest.mark.parametrize("case", ["gpt2", "bert", "llama", "bert-base"])
def test_deepcopy_is_an_accelerated_model_of_its_own(case):
    model, ref = _accelerated_pair(case)
    _assert_matches(model, ref)  # run once first: first-call checks and caches exist before the copy
    clone = copy.deepcopy(model)
    assert eet_hf.explain(clone).accelerated == eet_hf.explain(model).accelerated != []
    _assert_rewired_onto_itself(clone)
    assert clone.config is not model.config
    ours = {id(m.config) for m in model.modules() if hasattr(m, "config")}
    assert not ours & {id(m.config) for m in clone.modules() if hasattr(m, "config")}
    _assert_matches(clone, ref)
    eet_hf.restore(clone)  # issue 30: TypeError "attribute name must be string" in undo, copy left half restored
    _assert_plain(clone)
    _assert_matches(clone, ref)
    assert eet_hf.explain(model).accelerated != []  # the original is untouched
    _assert_matches(model, ref)


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_deepcopy_runs_on_its_own_weights(case):
    model, ref = _accelerated_pair(case)
    clone = copy.deepcopy(model)
    with torch.no_grad():  # change the copy (and the reference) only: the copy must compute with its own weights
        for module in (clone, ref):
            for name, param in module.named_parameters():
                if name.endswith("mlp.c_fc.weight") or name.endswith("mlp.up_proj.weight"):
                    param.mul_(1.5)
    _assert_matches(clone, ref)
    ids, mask = padded_batch(2, 5, [5, 3], "left")
    scored = dict(GREEDY, return_dict_in_generate=True, output_scores=True)
    got, expected = clone.generate(ids, attention_mask=mask, **scored), ref.generate(ids, attention_mask=mask, **scored)
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.scores, expected.scores):
        assert_close(a, b, ATOL)
    plain = copy.deepcopy(ref)
    eet_hf.restore(model)  # the original kept its weights: restored, it is not the changed reference
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-3)


def test_deepcopy_then_accelerate_with_other_options():
    model, ref = _accelerated_pair("gpt2")
    clone = eet_hf.accelerate(copy.deepcopy(model), mlp=False)
    assert not any(path.endswith(".mlp") for path in eet_hf.explain(clone).accelerated)
    _assert_rewired_onto_itself(clone)
    _assert_matches(clone, ref)
    assert "transformer.h.0.mlp" in eet_hf.explain(model).accelerated


def test_undo_markers_survive_copies():
    # The markers in the undo log are compared by identity: a copy of the log must still recognise them.
    from eet_hf.patches import _rewire

    for marker in (_rewire._MISSING, _rewire._REWIRED):
        assert copy.deepcopy(marker) is marker and copy.copy(marker) is marker
        assert pickle.loads(pickle.dumps(marker)) is marker


def test_deepcopy_of_a_tensor_parallel_model_is_refused():
    model, _ = _accelerated_pair("gpt2")
    model.__dict__[distributed.TP_ATTR] = distributed.TensorParallel(group=None, rank=0, world=2)
    with pytest.raises(eet_hf.EetUnsupportedError, match="tensor_parallel"):
        copy.deepcopy(model)
    with pytest.raises(eet_hf.EetUnsupportedError, match="tensor_parallel"):
        pickle.dumps(model)


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 4: torch.save / torch.load (and pickle)


@pytest.mark.parametrize("case", ["gpt2", "bert", "llama"])
def test_torch_save_load_gives_an_accelerated_model(case, tmp_path):
    model, ref = _accelerated_pair(case)
    _assert_matches(model, ref)
    path = tmp_path / "model.pt"
    torch.save(model, path)  # issue 30: AttributeError 'GPT2MLP' object has no attribute 'mlp_forward' on load
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is type(model)
    assert eet_hf.explain(loaded).accelerated == eet_hf.explain(model).accelerated != []
    _assert_rewired_onto_itself(loaded)
    _assert_matches(loaded, ref)
    eet_hf.restore(loaded)
    _assert_plain(loaded)
    _assert_matches(loaded, ref)
    _assert_matches(model, ref)


def test_pickle_keeps_options_and_shared_weights():
    model, ref = _accelerated_pair("gpt2")
    eet_hf.accelerate(model, mlp=False)
    loaded = pickle.loads(pickle.dumps(model))
    assert eet_hf.explain(loaded).accelerated == eet_hf.explain(model).accelerated
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tied weights stay one tensor
    _assert_matches(loaded, ref)
    shallow = copy.copy(model)  # a new module tree over the same tensors, accelerated with the same options
    assert shallow.lm_head.weight is model.lm_head.weight and shallow.transformer.h[0] is not model.transformer.h[0]
    assert eet_hf.explain(shallow).accelerated == eet_hf.explain(model).accelerated
    _assert_rewired_onto_itself(shallow)
    _assert_matches(shallow, ref)


_LOAD_IN_A_FRESH_PROCESS = """
import sys, torch, eet_hf
model = torch.load(sys.argv[1], weights_only=False)
ids, mask, expected = torch.load(sys.argv[2])
with torch.no_grad():
    got = model(ids, attention_mask=mask).logits
print("accelerated", len(eet_hf.explain(model).accelerated))
print("max_diff", (got - expected).abs().max().item())
"""


def test_torch_load_in_a_fresh_process(tmp_path):
    model, ref = _accelerated_pair("gpt2")
    ids, mask = padded_batch(2, 7, [7, 4], "left")
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
    torch.save(model, tmp_path / "model.pt")
    torch.save((ids, mask, expected), tmp_path / "inputs.pt")
    done = subprocess.run([sys.executable, "-c", _LOAD_IN_A_FRESH_PROCESS, str(tmp_path / "model.pt"),
                           str(tmp_path / "inputs.pt")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("accelerated", "max_diff")))
    assert int(lines["accelerated"]) == len(eet_hf.explain(model).accelerated)
    assert float(lines["max_diff"]) <= ATOL


def test_a_pickle_that_cannot_be_accelerated_loads_plain_and_says_so(caplog, monkeypatch):
    model, ref = _accelerated_pair("gpt2")
    data = pickle.dumps(model)

    def refuse(*args, **kwargs):
        raise eet_hf.EetUnsupportedError("eet_hf: refused for the test")

    monkeypatch.setattr(eet_hf.api, "accelerate", refuse)
    with caplog.at_level("WARNING", logger="eet_hf"):
        loaded = pickle.loads(data)
    assert "plain HF" in caplog.text and "refused for the test" in caplog.text
    _assert_plain(loaded)
    _assert_matches(loaded, ref)


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 7: not a model


@pytest.mark.parametrize("entry", [eet_hf.accelerate, eet_hf.restore, eet_hf.explain])
@pytest.mark.parametrize("value", ["gpt2", None, 3, torch.zeros(2)])
def test_entry_points_name_what_they_expected(entry, value):
    with pytest.raises(TypeError, match=r"PreTrainedModel.*from_pretrained") as info:
        entry(value)
    assert type(value).__name__ in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 12: models and configs built from an accelerated model's config


def _eager_pair(case: str):
    cls, make_config = CASES[case]
    return pair(cls, make_config(attn_implementation="eager"))


@pytest.mark.parametrize("case", list(CASES))
def test_model_built_from_an_accelerated_config_is_plain(case):
    model, ref = _eager_pair(case)
    eet_hf.accelerate(model)
    built = type(model)(model.config).eval()  # HF's tests and assistant-model setups do this
    built.load_state_dict(ref.state_dict())
    assert {m.config._attn_implementation for m in built.modules() if hasattr(m, "config")} == {"eager"}
    ids, mask = padded_batch(2, 7, [7, 4], "right")
    with torch.no_grad():
        got = built(ids, attention_mask=mask, output_attentions=True).attentions
        expected = ref(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        assert_close(a, b, 0.0)
    # The accelerated model still runs eet's attention, and says so.
    assert eet_hf.explain(model).accelerated != []
    inner = [m for m in model.modules() if m is not model and hasattr(m, "config")]
    assert {m.config._attn_implementation for m in inner} == {"eet"}
    _assert_matches(model, ref)


def test_config_of_an_accelerated_model_reports_the_original_everywhere_outside_it(tmp_path):
    model, ref = _accelerated_pair("llama")
    assert model.config._attn_implementation == ref.config._attn_implementation == "sdpa"
    assert model.config.to_dict() == ref.config.to_dict()
    for config in (model.config, model.model.config):  # the top-level config, and the one its modules read
        config.save_pretrained(tmp_path)
        assert '"eet"' not in (tmp_path / "config.json").read_text()
        assert '"eet"' not in json.dumps(config.to_dict())
        for clone in (copy.deepcopy(config), copy.copy(config), pickle.loads(pickle.dumps(config))):
            assert type(clone) is type(ref.config) and clone._attn_implementation == "sdpa"
    built = AutoModelForCausalLM.from_config(model.config)
    assert {m.config._attn_implementation for m in built.modules() if hasattr(m, "config")} == {"sdpa"}
    # A model built from the view a module holds shares that view (HF does not copy configs), but what the
    # accelerated model's config says stays the original.
    AutoModelForCausalLM.from_config(model.model.config)
    assert model.config._attn_implementation == "sdpa" and model.model.config._attn_implementation == "eet"
    model.save_pretrained(tmp_path / "saved")
    assert '"eet"' not in (tmp_path / "saved" / "config.json").read_text()
    _assert_matches(model, ref)


def test_config_changes_after_accelerate_reach_every_module():
    model, ref = _accelerated_pair("llama")
    model.config.output_hidden_states = ref.config.output_hidden_states = True
    ids = torch.randint(7, 100, (2, 6))
    with torch.no_grad():
        out, expected = model(ids), ref(ids)
    assert out.hidden_states is not None and len(out.hidden_states) == len(expected.hidden_states)
    assert_close(out.logits, expected.logits, ATOL)
    model.config._attn_implementation = "eager"  # another implementation set later shows through eet's
    assert {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")} == {"eager"}
    ref.config._attn_implementation = "eager"
    with torch.no_grad():
        got = model(ids, output_attentions=True).attentions
        expected = ref(ids, output_attentions=True).attentions
    for a, b in zip(got, expected):
        assert_close(a, b, 0.0)


@pytest.mark.parametrize("case", ["llama-base", "llama"])
def test_config_view_under_full_graph_compile(case):
    # The base model's forward holds the view while it runs (it builds the masks): dynamo traces that too.
    model, ref = _accelerated_pair(case)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids, mask = padded_batch(2, 7, [7, 4], "left")
    with torch.no_grad():
        assert_close(_main_output(compiled(ids, attention_mask=mask)), _main_output(ref(ids, attention_mask=mask)),
                     ATOL, where=mask[..., None])
    assert model.config._attn_implementation == "sdpa" and type(model.config) is type(ref.config)


def test_restore_gives_back_the_config_object():
    model, ref = _accelerated_pair("gpt2")
    eet_hf.restore(model)
    assert all(m.config is model.config for m in model.modules() if hasattr(m, "config"))
    assert type(model.config) is type(ref.config)


# ---------------------------------------------------------------------------------------------------------------
# Issue 30 item 14: signatures


@pytest.mark.parametrize("case", list(CASES))
def test_rewired_methods_keep_their_signatures(case):
    model, ref = _accelerated_pair(case)
    modules = dict(ref.named_modules())
    rewired = 0
    for name, module in model.named_modules():
        assert inspect.signature(module.forward) == inspect.signature(modules[name].forward), name or "<model>"
        rewired += "forward" in module.__dict__
    assert rewired > 0
    if hasattr(ref, "generate"):
        assert inspect.signature(model.generate) == inspect.signature(ref.generate)
