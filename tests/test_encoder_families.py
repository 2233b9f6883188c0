"""Every family with an encoder record (patches/encoder_records.py: BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA,
DistilBERT) on CPU (reference ops), accelerated vs an unpatched deep copy: every graphed head on right-padded and
unpadded batches through the packed encoder, packing as views with an identical state_dict, restore(),
save_pretrained round trips, the calls handed to HF's layer loop, a model the record does not describe, parts replaced
after accelerate(), and pipelines. Whole-model graphs per family: test_encoder_families_graphs.py."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import transformers as tf
from torch import nn

import eet_hf
from eet_hf import patches
from eet_hf.encoder import model_graphs, packed_qkv

from .helpers import assert_close, make_tokenizer, padded_batch
from .test_encoder_model_graphs import _compare

FP32_ATOL = 1e-4  # the project's fp32 logits contract
RECORDS = patches.encoder_records.RECORDS
FAMILIES = sorted(RECORDS)
_ENC = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)
_CONFIGS = {
    "bert": lambda: tf.BertConfig(**_ENC, max_position_embeddings=64, pad_token_id=0),
    # RoBERTa's positions start at pad_token_id + 1 (computed from input_ids): room for 64 tokens after 1 + 1.
    "roberta": lambda: tf.RobertaConfig(**_ENC, max_position_embeddings=70, pad_token_id=1),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**_ENC, max_position_embeddings=70, pad_token_id=1),
    "camembert": lambda: tf.CamembertConfig(**_ENC, max_position_embeddings=70, pad_token_id=1),
    "electra": lambda: tf.ElectraConfig(**_ENC, embedding_size=32, max_position_embeddings=64, pad_token_id=0),
    "distilbert": lambda: tf.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=100,
                                              max_position_embeddings=64, pad_token_id=0),
}
BASES = {family: RECORDS[family].heads[0] for family in FAMILIES}  # BertModel, RobertaModel, ...
HEADS = [(family, head) for family in FAMILIES for head in RECORDS[family].heads]


def _head(family: str, suffix: str) -> str:
    """The family's class name for a head: _head("roberta", "ForSequenceClassification")."""
    return BASES[family].removesuffix("Model") + suffix


def _pair(family: str, head: str | None = None, **overrides):
    """(model, untouched deep copy) of a tiny `family` model, eval mode; head: a class name (default: the base).
    Weights are drawn ten times wider than HF's init and every bias and LayerNorm parameter at random (HF starts them
    at 0 and 1), so a swapped norm, bias or scale shows in the outputs."""
    config = _CONFIGS[family]()
    config.initializer_range = 0.2
    for key, value in overrides.items():
        setattr(config, key, value)
    model = getattr(tf, head or BASES[family])(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                module.bias.normal_(0.0, 0.2)
    return model, copy.deepcopy(model)


def _inputs(model, lengths: list[int], seq: int, side: str = "right", choices: int | None = None) -> dict:
    """input_ids (pad_token_id at padding), attention_mask, and token_type_ids where the family takes them."""
    config = model.config
    ids, mask = padded_batch(len(lengths), seq, lengths, side)
    inputs = {"input_ids": ids.masked_fill(mask == 0, config.pad_token_id), "attention_mask": mask}
    if "token_type_ids" in RECORDS[config.model_type].inputs:
        inputs["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(len(lengths), seq) * mask
    if choices:  # multiple choice heads: [batch, choices, seq]
        inputs = {k: v.view(len(lengths) // choices, choices, seq) for k, v in inputs.items()}
    return inputs


def _parts(model) -> list:
    record = RECORDS[model.config.model_type]
    layers = model.base_model.get_submodule(f"{record.encoder}.{record.layers}")
    return [tuple(layer.get_submodule(f"{record.attention}.{n}") for n in (record.q, record.k, record.v))
            for layer in layers]


def _encoder(model):
    return model.base_model.get_submodule(RECORDS[model.config.model_type].encoder)


# ------------------------------------------------------------------------------------------------ the packed path


@pytest.mark.parametrize("family, head", HEADS, ids=[f"{f}-{h}" for f, h in HEADS])
def test_every_head_takes_the_packed_path_and_matches_hf(family, head, packed_calls):
    model, ref = _pair(family, head)
    eet_hf.accelerate(model)
    assert model_graphs.ATTR in model.__dict__, eet_hf.explain(model)  # every record head gets whole-model graphs
    choices = 2 if head.endswith("MultipleChoice") else None
    padded = _inputs(model, [9, 5, 2, 1], 9, choices=choices)
    full = {k: v for k, v in _inputs(model, [7, 7], 7, choices=choices).items() if k != "attention_mask"}
    with torch.no_grad():
        _compare(model(**padded), ref(**padded), padded["attention_mask"])
        _compare(model(**full), ref(**full), torch.ones_like(full["input_ids"]))
    assert len(packed_calls) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_explain_packing_views_and_identical_state_dict(family):
    head = RECORDS[family].vocab_heads[0]  # an MLM head: tied output embeddings too
    model, ref = _pair(family, head)
    params_before = dict(model.named_parameters())
    bytes_before = sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                        for p in model.parameters()}.values())
    eet_hf.accelerate(model)
    report = eet_hf.explain(model)
    prefix = f"{model.base_model_prefix}." if model.base_model is not model else ""
    assert f"{prefix}{RECORDS[family].encoder}" in report.accelerated and not report.fallbacks, report
    assert "<model>: whole-model CUDA graphs" in report.cuda_only
    # Same Parameter objects, now slices of one [3*hidden, hidden] buffer per layer; no second copy of anything.
    assert all(p is params_before[name] for name, p in model.named_parameters())
    for q, k, v in _parts(model):
        weight, bias = packed_qkv((q, k, v))
        assert weight.shape == (192, 64) and bias.shape == (192,)
        assert weight.data_ptr() == q.weight.data_ptr() and v.bias.data_ptr() == bias.data_ptr() + 128 * 4
    assert sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for p in model.parameters()}.values()) == bytes_before
    state, expected = model.state_dict(), ref.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[name], value) for name, value in expected.items())


@pytest.mark.parametrize("family", FAMILIES)
def test_restore_gives_plain_hf_back(family, packed_calls):
    model, ref = _pair(family, _head(family, "ForSequenceClassification"))
    eet_hf.accelerate(model)
    eet_hf.restore(model)
    assert all(not {"forward", "_eet_encoder", "_eet_residual", "_eet_mlp", model_graphs.ATTR} & set(m.__dict__)
               for m in model.modules())
    inputs = _inputs(model, [8, 3, 1], 8)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)
    assert not packed_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(family, tmp_path, packed_calls):
    head = RECORDS[family].vocab_heads[0]
    model, ref = _pair(family, head)
    eet_hf.accelerate(model)
    model.save_pretrained(tmp_path)
    assert "eet" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    loaded = getattr(tf, head).from_pretrained(tmp_path).eval()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ref.state_dict().items())
    inputs = _inputs(model, [9, 4], 9)
    with torch.no_grad():
        expected = ref(**inputs)
        assert torch.equal(loaded(**inputs).logits, expected.logits)  # plain HF from eet's save
        eet_hf.accelerate(loaded)
        _compare(loaded(**inputs), expected, inputs["attention_mask"])
        _compare(model(**inputs), expected, inputs["attention_mask"])
    assert len(packed_calls) == 2


# ------------------------------------------------------------------------------------------------ HF's layer loop


def _holes(model):
    inputs = _inputs(model, [9, 6, 9], 9)
    inputs["attention_mask"][2, 4] = 0  # a hole: not plain padding, eet's mask function hands it to HF's sdpa path
    return inputs


def _config_hidden_states(model, ref):
    """config.output_hidden_states (sentence-transformers' adaptive-layer loss sets it): HF collects the layers'
    outputs without any argument reaching the encoder."""
    model.config.output_hidden_states = ref.config.output_hidden_states = True
    return _inputs(model, [8, 5, 1], 8), {}


# case -> (model, ref) -> (inputs, extra call arguments)
FALLBACKS = {
    "hidden_states_attentions": lambda m, r: (_inputs(m, [8, 5, 1], 8), {"output_hidden_states": True,
                                                                            "output_attentions": True}),
    "config_hidden_states": _config_hidden_states,
    "left_padding": lambda m, r: (_inputs(m, [8, 5, 1], 8, side="left"), {}),
    "mask_with_holes": lambda m, r: (_holes(m), {}),
}


@pytest.mark.parametrize("case", FALLBACKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_calls_the_packed_encoder_refuses_give_hfs_answers(family, case, packed_calls):
    model, ref = _pair(family)
    eet_hf.accelerate(model)
    inputs, extra = FALLBACKS[case](model, ref)
    mask = inputs["attention_mask"]
    if "output_attentions" in extra:
        ref.set_attn_implementation("eager")  # HF's sdpa returns no attention weights; eet runs eager for them
    with torch.no_grad():
        got, expected = model(**inputs, **extra), ref(**inputs, **extra)
    assert not packed_calls
    real = mask.bool().unsqueeze(-1)
    assert_close(got.last_hidden_state, expected.last_hidden_state, FP32_ATOL, where=real)
    if case in ("hidden_states_attentions", "config_hidden_states"):
        assert len(got.hidden_states) == len(expected.hidden_states) == model.config.num_hidden_layers + 1
        for a, b in zip(got.hidden_states, expected.hidden_states):
            assert_close(a, b, FP32_ATOL, where=real)
    if case == "hidden_states_attentions":
        assert len(got.attentions) == len(expected.attentions) == model.config.num_hidden_layers
        for a, b in zip(got.attentions, expected.attentions):
            assert_close(a, b, FP32_ATOL, where=mask.bool().view(mask.shape[0], 1, -1, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_take_the_layer_path_and_equal_hfs(family, packed_calls):
    model, ref = _pair(family)
    eet_hf.accelerate(model)
    inputs = _inputs(model, [7, 4], 7)
    real = inputs["attention_mask"].bool().unsqueeze(-1)
    grads = []
    for m in (model, ref):
        out = m(**inputs).last_hidden_state  # grad mode on, parameters require grad
        (out * real).square().sum().backward()
        grads.append(_parts(m)[0][0].weight.grad)  # layer 0's query weight: a view of the packed buffer in eet's
    assert not packed_calls
    assert grads[0] is not None and torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_of_another_dtype_take_the_layer_path(family, packed_calls):
    """Under autocast hidden states can reach the encoder in bf16 with fp32 weights: HF's layer loop, HF's answer."""
    model, ref = _pair(family)
    eet_hf.accelerate(model)
    hidden = torch.randn(2, 6, 64).bfloat16()
    with torch.no_grad():
        truth = _encoder(ref)(hidden.float()).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = _encoder(model)(hidden).last_hidden_state, _encoder(ref)(hidden).last_hidden_state
    assert not packed_calls
    # bf16 GEMMs in both, rounded at different places (eet's ops compute in fp32): the flash-attention rule.
    err, hf_err = ((t.float() - truth).abs().max().item() for t in (got, expected))
    assert err <= 2 * hf_err + 1e-2, (err, hf_err)


@pytest.mark.parametrize("family", FAMILIES)
def test_options_and_activations(family, packed_calls):
    """attention=False: no packed encoder, no graphs. mlp=False, or an activation eet has no kernel for: the packed
    encoder runs the activation module; the latter is reported."""
    inputs = None
    act = "activation" if family == "distilbert" else "hidden_act"
    for options, overrides, packed in (({"attention": False}, {}, False), ({"mlp": False}, {}, True),
                                       ({}, {act: "relu"}, True)):
        model, ref = _pair(family, **overrides)
        eet_hf.accelerate(model, **options)
        inputs = inputs or _inputs(model, [8, 3], 8)
        packed_calls.clear()
        with torch.no_grad():
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
        assert bool(packed_calls) is packed, options
        assert ("_eet_encoder" in _encoder(model).__dict__) is packed
        assert (model_graphs.ATTR in model.__dict__) is packed
        fallbacks = eet_hf.explain(model).fallbacks
        assert any("'relu'" in why for why in fallbacks.values()) is (overrides != {}), fallbacks


@pytest.mark.parametrize("family", [f for f in FAMILIES if any(h.endswith("CausalLM") for h in RECORDS[f].heads)])
def test_decoder_configs_keep_the_layer_path(family, packed_calls):
    head = next(h for h in RECORDS[family].heads if h.endswith("CausalLM"))
    model, ref = _pair(family, head, is_decoder=True)
    eet_hf.accelerate(model)
    assert "_eet_encoder" not in _encoder(model).__dict__ and model_graphs.ATTR not in model.__dict__
    inputs = _inputs(model, [7, 7], 7)
    with torch.no_grad():
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert not packed_calls


# ------------------------------------------------------------------------------------------------ the record check


def _subclass_layer_attention(model) -> None:
    """Layer 1's attention becomes a user's subclass of HF's: its forward may differ, so the record must not match."""
    record = RECORDS[model.config.model_type]
    layers = model.base_model.get_submodule(f"{record.encoder}.{record.layers}")
    attention = layers[1].get_submodule(record.attention)
    attention.__class__ = type("MyAttention", (type(attention),), {})


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_the_record_does_not_describe_keeps_generic_swaps(family, packed_calls, caplog):
    model, ref = _pair(family)
    _subclass_layer_attention(model)
    with pytest.raises(eet_hf.EetUnsupportedError, match="record does not match"):
        eet_hf.accelerate(model, strict=True)
    assert all("forward" not in m.__dict__ for m in model.modules()), "a refused accelerate must undo its changes"
    with caplog.at_level(logging.WARNING, logger="eet_hf"):
        eet_hf.accelerate(model)
    assert f"{type(model).__name__}: no packed encoder" in caplog.text
    report = eet_hf.explain(model)
    assert "layer 1" in report.fallbacks["packed encoder"] and "MyAttention" in report.fallbacks["packed encoder"]
    assert "_eet_encoder" not in _encoder(model).__dict__ and model_graphs.ATTR not in model.__dict__
    checked = [m for m in model.modules() if "_eet_check" in m.__dict__]  # the generic adapter's checked swaps
    assert checked and "attention (HF AttentionInterface 'eet')" in report.accelerated
    inputs = _inputs(model, [9, 6, 2], 9)
    with torch.no_grad():
        for _ in range(2):  # the first call runs the generic swaps' checks, the second their eet ops
            _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert all(m._eet_check.state == "eet" for m in checked) and not packed_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_parts_replaced_after_accelerate_are_seen(family, packed_calls):
    """A new query Linear (other weights) is read and packed on the next call; an output dense that is no longer an
    nn.Linear sends calls to HF's layer loop. Both give HF's answer."""
    model, ref = _pair(family)
    eet_hf.accelerate(model)
    record = RECORDS[family]
    inputs = _inputs(model, [8, 5], 8)
    for m in (model, ref):
        torch.manual_seed(1)
        attention = _encoder(m).get_submodule(f"{record.layers}.0.{record.attention}")
        setattr(attention, record.q, nn.Linear(64, 64))
    with torch.no_grad():
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert len(packed_calls) == 1
    scaled = type("ScaledLinear", (nn.Linear,), {"forward": lambda self, x: 2 * nn.Linear.forward(self, x)})
    for m in (model, ref):
        torch.manual_seed(2)
        parent, _, name = f"{record.layers}.1.{record.ffn_out}".rpartition(".")
        setattr(_encoder(m).get_submodule(parent), name, scaled(128, 64))
    with torch.no_grad():
        _compare(model(**inputs), ref(**inputs), inputs["attention_mask"])
    assert len(packed_calls) == 1  # the second call took HF's layer loop


def test_deepcopy_of_an_accelerated_family_model_runs_packed(packed_calls):
    model, ref = _pair("roberta", "RobertaForSequenceClassification")
    eet_hf.accelerate(model)
    clone = copy.deepcopy(model)
    runtime = _encoder(clone).__dict__.get("_eet_encoder")
    assert runtime is not None and runtime is not _encoder(model)._eet_encoder
    inputs = _inputs(model, [8, 2], 8)
    with torch.no_grad():
        _compare(clone(**inputs), ref(**inputs), inputs["attention_mask"])
    assert packed_calls


# ------------------------------------------------------------------------------------------------ pipelines


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_pipelines_unchanged_on_real_tokens(family, task, packed_calls):
    tok = make_tokenizer("bert")
    if "token_type_ids" not in RECORDS[family].inputs:
        tok.model_input_names = ["input_ids", "attention_mask"]  # as DistilBERT's own tokenizers
    head = BASES[family] if task == "feature-extraction" else _head(family, "ForSequenceClassification")
    model, ref = _pair(family, head, pad_token_id=tok.pad_token_id, num_labels=3)
    eet_hf.accelerate(model)
    texts = ["w1 w2 w3 w4", "w5 w6 w7 w8 w9 w10 w11 w12 w13", "w14"]
    kwargs = {"top_k": None} if task == "text-classification" else {}
    got, expected = (tf.pipeline(task, model=m, tokenizer=tok, batch_size=3)(texts, **kwargs) for m in (model, ref))
    if task == "feature-extraction":
        for text, a, b in zip(texts, got, expected):
            n_real = len(tok(text)["input_ids"])  # batched, HF computes the pads too; eet leaves zeros there
            a, b = torch.tensor(a[0]), torch.tensor(b[0])
            assert_close(a[:n_real], b[:n_real], FP32_ATOL)
            assert torch.equal(a[n_real:], torch.zeros_like(a[n_real:]))
    else:
        for row_got, row_exp in zip(got, expected):
            assert [d["label"] for d in row_got] == [d["label"] for d in row_exp]
            assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(row_got, row_exp))
    assert packed_calls
