"""The fused decoder step (eet_hf/engine/fused_decoder.py) on CPU: routing by record, packed weights as views,
HF's greedy tokens, the probe's checks of a record's arithmetic (the decode ops: tests/test_decode_ops.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import eet_hf
from eet_hf.engine import decoder_families, decoder_parts, fused_decoder, fused_decoder_refusal
from eet_hf.engine.generate import ENGINE_ATTR
from eet_hf.engine.packing import pack_rows
from eet_hf.ops import decode as D

from .helpers import padded_batch, randomize_layer_norms

VOCAB = 97
FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 32}),
    "phi3": (Phi3ForCausalLM, Phi3Config, {"pad_token_id": 0}),
}
# OPT (pre-LN, as OPT-125m / 1.3b). init_std 0.1 (HF: 0.02) makes the attention sharp enough that a wrong q scale or
# softmax scale changes greedy tokens.
OPT_SIZES = dict(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                 max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2, init_std=0.1)
# OPT-350m's layout (post-LN, word embeddings projected in and out) and the variants the fused step refuses, each with
# the reason explain() gives.
OPT_REFUSED = {
    "opt-350m": (dict(do_layer_norm_before=False, word_embed_proj_dim=32), "do_layer_norm_before is False"),
    "post-ln": (dict(do_layer_norm_before=False), "do_layer_norm_before is False"),
    "projected": (dict(word_embed_proj_dim=32), "project_in is set"),
    "gelu": (dict(activation_function="gelu"), "GELUActivation is not relu"),
    "no-affine-norms": (dict(layer_norm_elementwise_affine=False), "has no weight or epsilon"),
}


def _opt(**overrides) -> torch.nn.Module:
    """A tiny OPT with random LayerNorm weights and biases (HF initializes them to 1 and 0, which would let a
    swapped or missing norm parameter go unnoticed)."""
    return randomize_layer_norms(OPTForCausalLM(OPTConfig(**{**OPT_SIZES, **overrides})).eval())


def _model(name: str, **overrides) -> torch.nn.Module:
    if name == "opt":
        return _opt(**overrides)
    if name == "opt_no_bias":
        return _opt(enable_bias=False, **overrides)
    cls, config_cls, extra = FAMILIES[name]
    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    config = config_cls(**{**sizes, **extra, **overrides})
    return cls(config).eval()


def _decoder_step(model) -> str:
    report = eet_hf.explain(model)
    if any(line.startswith("decoder step") for line in report.accelerated):
        return "fused"
    return "hf-layers" if "decoder step" in report.fallbacks else "none"


@pytest.mark.parametrize("name", [*sorted(FAMILIES), "opt", "opt_no_bias"])
def test_fused_step_gives_hf_tokens_on_left_padded_batches(name):
    hf = _model(name)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert _decoder_step(model) == "fused", eet_hf.explain(model)
    ids, mask = padded_batch(3, 9, [9, 4, 1], "left", vocab=VOCAB)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), hf.generate(ids, **kwargs))
    handle = model.__dict__[ENGINE_ATTR]
    assert handle.build is fused_decoder.build and handle.engine.stats["eager_steps"] == 11


def test_qwen2_biases_are_packed_with_the_weights():
    model = _model("qwen2")
    eet_hf.accelerate(model)
    attn = model.model.layers[0].self_attn
    weight, bias = pack_rows([attn.q_proj, attn.k_proj, attn.v_proj])
    assert bias is not None and bias.shape == (weight.shape[0],)
    assert attn.k_proj.bias.data_ptr() == bias.data_ptr() + attn.q_proj.bias.numel() * bias.element_size()


def test_packing_makes_views_keeps_state_dict_and_memory(tmp_path):
    model = _model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = sum(p.numel() for p in model.parameters())
    fused_decoder.build(model)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    storage = attn.q_proj.weight.untyped_storage().data_ptr()
    assert attn.k_proj.weight.untyped_storage().data_ptr() == storage == attn.v_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
    assert isinstance(attn.q_proj.weight, torch.nn.Parameter)
    # No element is held twice: the packed storages are exactly the parameters they back.
    assert attn.q_proj.weight.untyped_storage().nbytes() == sum(
        p.numel() * p.element_size() for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
    assert sum(p.numel() for p in model.parameters()) == params_before
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    # Packing again (the engine builds its view per call) copies nothing.
    weight, _ = pack_rows([attn.q_proj, attn.k_proj, attn.v_proj])
    assert weight.data_ptr() == attn.q_proj.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())


def test_restore_keeps_values_and_hf_outputs():
    hf = _model("llama")
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids = torch.randint(1, VOCAB, (2, 6))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        eet_hf.restore(model)
        assert torch.equal(model(ids).logits, hf(ids).logits)


def test_moved_model_is_packed_again():
    model = eet_hf.accelerate(_model("llama"))
    ids = torch.randint(1, VOCAB, (1, 5))
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    first = model.generate(ids, **kwargs)
    model.to(torch.float64)  # new storages: the views are gone
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() + attn.q_proj.weight.nbytes != attn.k_proj.weight.data_ptr()
    again = model.to(torch.float32).generate(ids, **kwargs)
    assert torch.equal(first, again)
    assert attn.q_proj.weight.data_ptr() + attn.q_proj.weight.nbytes == attn.k_proj.weight.data_ptr()


def test_unfused_activation_keeps_hf_layers_in_the_engine():
    hf = _model("llama", hidden_act="relu")
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert _decoder_step(model) == "hf-layers"
    assert "down(silu(gate(x)) * up(x))" in eet_hf.explain(model).fallbacks["decoder step"]
    ids = torch.randint(1, VOCAB, (2, 5))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), hf.generate(ids, **kwargs))


def test_every_records_pairs_have_a_kernel():
    """Each (norm, epilogue) pair a record makes the fused step run is one the CUDA kernel is built for (KERNEL_PAIRS,
    csrc/decode_linear.cu `dispatch`); every record's family has an embedding entry in decoder_families."""
    for model_type, record in fused_decoder.RECORDS.items():
        activation = decoder_parts.ACTIVATIONS[record.activation]
        used = {("none", "residual"), (record.norm, "none"), (record.norm, activation.epilogue)}
        used.add((record.norm, "none" if record.q_norm else "rotary_kv"))
        assert used <= D.KERNEL_PAIRS, (model_type, used - D.KERNEL_PAIRS)
        assert model_type in decoder_families.FAMILIES


def test_model_whose_kernels_fail_the_probe_step_runs_hf_layers(monkeypatch, caplog):
    """build() checks the fused kernels against their references on a probe step (on CUDA); a disagreement puts
    HF's layers in the engine instead, logged, and generate still gives HF's tokens."""
    from eet_hf.engine.hf_layers_forward import HFDecoderStack

    monkeypatch.setattr(fused_decoder, "kernel_check", lambda view: "its kernels' logits differ (simulated)")
    hf = _model("llama")
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids = torch.randint(1, VOCAB, (2, 5))
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with caplog.at_level("WARNING", logger="eet_hf"), torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), hf.generate(ids, **kwargs))
    assert isinstance(model.__dict__[ENGINE_ATTR].view, HFDecoderStack)
    assert "simulated" in caplog.text


def test_kernel_check_is_a_no_op_off_cuda():
    view = fused_decoder.build(_model("llama"))
    assert isinstance(view, fused_decoder.FusedDecoder) and fused_decoder.kernel_check(view) is None


# ----------------------------------------------------------------------------------------------------------------
# OPT: LayerNorm, learned positions, no rotary, q scaled after its projection, fc1 -> ReLU -> fc2.


@pytest.mark.parametrize("variant", sorted(OPT_REFUSED))
def test_opt_variants_the_fused_step_refuses_keep_hf_layers_and_tokens(variant):
    overrides, reason = OPT_REFUSED[variant]
    hf = _opt(**overrides)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert _decoder_step(model) == "hf-layers", eet_hf.explain(model)
    assert reason in eet_hf.explain(model).fallbacks["decoder step"]
    ids, mask = padded_batch(3, 9, [9, 4, 1], "left", vocab=VOCAB)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), hf.generate(ids, **kwargs))
    assert model.__dict__[ENGINE_ATTR].engine.stats["calls"] == 1, "eet's loop (with HF's layers) did not run"


@pytest.mark.parametrize("change,reason", [
    (dict(q_scale=False), "q, k, v differ from the record's"),
    (dict(norm="rms"), "LayerNorm does not compute HF Llama's RMSNorm"),
    (dict(post_attention_norm="self_attn_layer_norm"), "does not compute the record's layer"),
    (dict(input_norm="final_layer_norm"), "q, k, v differ from the record's"),
    (dict(activation="silu", gate="fc1"), "ReLU is not silu"),
    (dict(config=(("do_layer_norm_before", False),)), "the opt record takes False"),
])
def test_opt_probe_refuses_a_record_that_is_not_hf_arithmetic(monkeypatch, change, reason):
    """The probe runs HF's own OPT layer (attention handing over q, k, v) against the record's arithmetic: a record
    that describes it wrongly is refused with the reason, and the model keeps HF's layers."""
    model = _opt()
    assert fused_decoder_refusal.refusal(model) is None
    records = fused_decoder.RECORDS  # patches/decoder_records.py's table
    monkeypatch.setitem(records, "opt", dataclasses.replace(records["opt"], **change))
    got = fused_decoder_refusal.refusal(model)
    assert got is not None and reason in got, got


def test_opt_probe_sees_the_attention_handover():
    """The layer probe's attention receives HF's scaled q and unrotated k, v with scale 1.0 (transformers 5.17 and
    5.25: OPTAttention scales q right after q_proj and attends with scaling=1.0)."""
    model = _opt()
    layer = model.model.decoder.layers[0]
    clone = fused_decoder_refusal._class_forwards(layer)
    from transformers import AttentionInterface

    AttentionInterface.register(fused_decoder_refusal._PROBE_ATTENTION, fused_decoder_refusal._probe_attention)
    clone.self_attn.config = copy.deepcopy(clone.self_attn.config)
    clone.self_attn.config._attn_implementation = fused_decoder_refusal._PROBE_ATTENTION
    x = torch.randn(1, 4, 64)
    with torch.no_grad():
        type(clone).forward(clone, x, attention_mask=None)
        h = layer.self_attn_layer_norm(x)
        q, k, v, scaling = clone.self_attn.__dict__["_eet_probe_seen"]
        assert scaling == 1.0
        assert torch.equal(q, (layer.self_attn.q_proj(h) * layer.self_attn.scaling).view(1, 4, 4, 16).transpose(1, 2))
        assert torch.equal(k, layer.self_attn.k_proj(h).view(1, 4, 4, 16).transpose(1, 2))
    assert model.config._attn_implementation != fused_decoder_refusal._PROBE_ATTENTION, "the probe changed the model's config"
    assert "_eet_probe_seen" not in layer.self_attn.__dict__


def test_opt_op_references_are_hf_modules_bit_for_bit():
    """fp32 on CPU: the decode ops' references reproduce HF's OPT layer computations exactly, through the packed
    q/k/v weight the engine uses (LayerNorm -> q_proj * scaling, k_proj, v_proj into the cache; out_proj + residual;
    LayerNorm -> fc1 -> ReLU; fc2 + residual; final LayerNorm -> LM head)."""
    model = _opt()
    decoder = model.model.decoder
    layer, attn = decoder.layers[0], decoder.layers[0].self_attn
    view = fused_decoder.build(model)
    fused = view.layers[0]
    batch, seq, hidden, heads, head_dim = 2, 5, 64, 4, 16
    x = torch.randn(batch, seq, hidden)
    k_cache, v_cache = torch.zeros(batch, heads, 8, head_dim), torch.zeros(batch, heads, 8, head_dim)
    write_pos = torch.zeros(batch, dtype=torch.int32)
    with torch.no_grad():
        q = D.decode_qkv_rope(x, fused.qkv_weight, fused.qkv_bias, fused.input_norm, fused.input_eps, None, None,
                              k_cache, v_cache, write_pos, heads, heads, fused.input_norm_bias, "layer", view.q_scale)
        h = layer.self_attn_layer_norm(x)

        def split(t):
            return t.view(batch, seq, heads, head_dim).transpose(1, 2)

        assert torch.equal(q, split(attn.q_proj(h) * attn.scaling)) and view.scale == 1.0
        assert torch.equal(k_cache[:, :, :seq], split(attn.k_proj(h)))
        assert torch.equal(v_cache[:, :, :seq], split(attn.v_proj(h)))
        rows = x.view(batch * seq, hidden)
        attn_out = torch.randn(batch * seq, hidden)
        after_attn = D.decode_linear(attn_out, fused.o_weight, fused.o_bias, residual=rows, epilogue="residual")
        assert torch.equal(after_attn, rows + attn.out_proj(attn_out))
        inner = D.decode_linear(after_attn, fused.up_weight, fused.up_bias, fused.post_norm, fused.post_eps,
                                epilogue=view.epilogue, norm_bias=fused.post_norm_bias, norm=view.norm)
        assert torch.equal(inner, layer.activation_fn(layer.fc1(layer.final_layer_norm(after_attn))))
        out = D.decode_linear(inner, fused.down_weight, fused.down_bias, residual=after_attn, epilogue="residual")
        assert torch.equal(out, after_attn + layer.fc2(inner))
        logits = D.decode_linear(out, view.lm_head.weight, None, view.final_norm, view.final_eps,
                                 norm_bias=view.final_norm_bias, norm="layer")
        assert torch.equal(logits, model.lm_head(decoder.final_layer_norm(out)))
        qkv = F.linear(h, fused.qkv_weight, fused.qkv_bias)
        q_only = D.qkv_rope_append(qkv, None, None, 0.0, None, None, k_cache, v_cache, write_pos, heads, heads,
                                   view.q_scale)
        assert torch.equal(q_only, q)


def test_opt_packing_makes_views_keeps_state_dict_and_restore(tmp_path):
    hf = _opt()
    model = eet_hf.accelerate(copy.deepcopy(hf))
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    attn = model.model.decoder.layers[1].self_attn
    weight, bias = pack_rows([attn.q_proj, attn.k_proj, attn.v_proj])
    assert weight.data_ptr() == attn.q_proj.weight.data_ptr()
    assert attn.v_proj.weight.data_ptr() == weight.data_ptr() + 2 * 64 * 64 * weight.element_size()
    assert attn.k_proj.bias.data_ptr() == bias.data_ptr() + 64 * bias.element_size()
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    ids = torch.randint(7, VOCAB, (2, 6))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        model.save_pretrained(tmp_path)
        loaded = OPTForCausalLM.from_pretrained(tmp_path)
        assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())
        eet_hf.restore(model)
        assert torch.equal(model(ids).logits, hf(ids).logits)


def test_opt_positions_past_the_learned_table_are_refused():
    """Learned positions bound the position ids (the family's max_positions), as for HF's layers in the engine."""
    model = eet_hf.accelerate(_opt(max_position_embeddings=16))
    assert fused_decoder.build(model).max_positions == 16
    with pytest.raises(ValueError, match="position embeddings"), torch.no_grad():
        model.generate(torch.randint(7, VOCAB, (1, 10)), max_new_tokens=10, do_sample=False, pad_token_id=0)
