"""The generic path (patches/generic.py) on models without their own adapter, accelerated vs an unpatched deep copy
on CPU (reference ops): padded logits, greedy generation, explain(), restore(), the first-call checks, sliding
windows, strict mode, and a model with nothing to accelerate. (Encoder families with a record: test_encoder_families.)"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import transformers as tf
from torch import nn

import eet_hf
import eet_hf.attention as eet_attention
from eet_hf import ops

from .helpers import assert_close, padded_batch

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
_SPECIAL = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, **_SPECIAL)

# name -> (model class, config, padding side, eet attention expected)
FAMILIES = {
    "gpt_neo": (tf.GPTNeoForCausalLM, lambda: tf.GPTNeoConfig(
        hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8,
        max_position_embeddings=128, **_SPECIAL), "left", False),
    "gpt_neox": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(**_DECODER), "left", True),
    "opt": (tf.OPTForCausalLM, lambda: tf.OPTConfig(
        hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, max_position_embeddings=128,
        word_embed_proj_dim=64, **_SPECIAL), "left", True),
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(num_key_value_heads=2, **_DECODER), "left", True),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(num_key_value_heads=2, **_DECODER), "left", True),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(num_key_value_heads=1, **_DECODER), "left", True),
}
DECODERS = [name for name, spec in FAMILIES.items() if spec[2] == "left"]


def _pair(name: str, **overrides):
    cls, make_config, side, eet_attn = FAMILIES[name]
    config = make_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    model = cls(config).eval()
    return model, copy.deepcopy(model), side, eet_attn


def _batch(side: str, pad_id: int):
    ids, mask = padded_batch(4, 11, [11, 7, 3, 1], side)
    return ids.masked_fill(mask == 0, pad_id), mask


class _AttentionSpy:
    """Counts eet kernel calls and HF sdpa fallbacks inside eet's attention function."""

    def __init__(self, monkeypatch):
        self.kernel, self.sdpa = 0, 0
        real_attention, real_sdpa = ops.attention, eet_attention._sdpa

        def attention(*args, **kwargs):
            self.kernel += 1
            return real_attention(*args, **kwargs)

        def sdpa(*args, **kwargs):
            self.sdpa += 1
            return real_sdpa(*args, **kwargs)

        monkeypatch.setattr(ops, "attention", attention)
        monkeypatch.setattr(eet_attention, "_sdpa", sdpa)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_padded_logits_match_hf(name, monkeypatch):
    model, ref, side, eet_attn = _pair(name)
    eet_hf.accelerate(model)
    spy = _AttentionSpy(monkeypatch)
    ids, mask = _batch(side, model.config.pad_token_id)
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
        again = model(ids, attention_mask=mask).logits  # second call: the checked modules now run eet's ops
    assert torch.isfinite(got).all() and torch.isfinite(again).all()
    real = mask.bool().unsqueeze(-1)
    assert_close(got, expected, FP32_ATOL, where=real)
    assert_close(again, expected, FP32_ATOL, where=real)
    report = eet_hf.explain(model)
    assert not [p for p, why in report.fallbacks.items() if "first-call check" in why], report.fallbacks
    layers = model.config.num_hidden_layers
    if eet_attn:
        assert "attention (HF AttentionInterface 'eet')" in report.accelerated
        assert spy.kernel == 2 * layers and spy.sdpa == 0, (spy.kernel, spy.sdpa)
    else:
        assert "AttentionInterface" in report.fallbacks["attention"] and spy.kernel == 0
    checks = [m._eet_check for m in model.modules() if "_eet_check" in m.__dict__]
    assert all(c.state == "eet" for c in checks), [(c.path, c.state) for c in checks]
    assert sum(c.what in ("layer_norm", "rms_norm") for c in checks) >= 2 * layers, report.accelerated


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generate_identical(name):
    model, ref, side, _ = _pair(name)
    eet_hf.accelerate(model)
    ids, mask = _batch(side, model.config.pad_token_id)
    kwargs = dict(attention_mask=mask, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


def test_gelu_mlps_are_fused_and_checked():
    model, ref, side, _ = _pair("gpt_neox")
    eet_hf.accelerate(model)
    mlps = [m for name, m in model.named_modules() if name.endswith(".mlp")]
    assert mlps and all("forward" in m.__dict__ for m in mlps)
    assert all(m._eet_check.state == "pending" for m in mlps)
    ids, mask = _batch(side, 0)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert all(m._eet_check.state == "eet" for m in mlps)
    report = eet_hf.explain(model)
    assert "gpt_neox.layers.0.mlp" in report.accelerated and "gpt_neox.rotary_emb" in report.fallbacks


def test_explain_names_what_stays_hf():
    model = _pair("llama")[0]
    eet_hf.accelerate(model)
    report = eet_hf.explain(model)
    assert "model.layers.0.input_layernorm" in report.accelerated and "model.norm" in report.accelerated
    assert "rotary" in report.fallbacks["model.rotary_emb"]
    assert "SiLU" in report.fallbacks["model.layers.1.mlp.act_fn"]
    text = str(report)
    assert "attention (HF AttentionInterface 'eet')" in text and "HF  (rotary" in text


def test_mlp_and_attention_options():
    model, ref, side, _ = _pair("gpt_neox")
    eet_hf.accelerate(model, mlp=False, attention=False)
    report = eet_hf.explain(model)
    assert not any(p.endswith("mlp") for p in report.accelerated) and report.accelerated
    assert model.config._attn_implementation == ref.config._attn_implementation
    ids, mask = _batch(side, 0)
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, FP32_ATOL,
                     where=mask.bool().unsqueeze(-1))


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
def test_restore_gives_hf_back(name):
    model, ref, side, _ = _pair(name)
    eet_hf.accelerate(model)
    ids, mask = _batch(side, model.config.pad_token_id)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    eet_hf.restore(model)
    assert all("forward" not in m.__dict__ and "_eet_check" not in m.__dict__ for m in model.modules())
    assert model.config._attn_implementation == ref.config._attn_implementation
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits)


def test_sliding_window_shorter_than_sequence_uses_sdpa_and_matches(monkeypatch):
    model, ref, side, _ = _pair("mistral", sliding_window=4)
    eet_hf.accelerate(model)
    assert "4-token sliding window" in eet_hf.explain(model).fallbacks["attention (sliding window)"]
    spy = _AttentionSpy(monkeypatch)
    ids, mask = _batch(side, 0)
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, FP32_ATOL,
                     where=mask.bool().unsqueeze(-1))
    assert spy.sdpa > 0 and spy.kernel == 0
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


def test_sliding_window_longer_than_sequence_runs_eet_kernels(monkeypatch):
    model, ref, side, _ = _pair("mistral", sliding_window=64)
    eet_hf.accelerate(model)
    spy = _AttentionSpy(monkeypatch)
    ids, mask = _batch(side, 0)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))
    assert spy.kernel > 0 and spy.sdpa == 0


def test_norm_whose_check_fails_keeps_hf_and_is_reported(caplog):
    # Gemma's RMSNorm scales by (1 + weight) in fp32: eet's rms_norm (Llama order) must not stand in for it.
    config = tf.GemmaConfig(num_key_value_heads=1, head_dim=16, **_DECODER)
    model = tf.GemmaForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "GemmaRMSNorm":
                module.weight.normal_()
    ref = copy.deepcopy(model)
    eet_hf.accelerate(model)
    assert "model.norm" in eet_hf.explain(model).accelerated  # recognised by structure, not yet checked
    ids, mask = _batch("left", 0)
    with caplog.at_level(logging.WARNING, logger="eet_hf"), torch.no_grad():
        for _ in range(2):
            assert_close(model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits, FP32_ATOL,
                         where=mask.bool().unsqueeze(-1))
    report = eet_hf.explain(model)
    assert "model.norm" not in report.accelerated
    assert "first-call check" in report.fallbacks["model.norm"]
    assert "first-call check" in report.fallbacks["model.layers.1.post_attention_layernorm"]
    assert caplog.text.count("does not reproduce GemmaRMSNorm") <= 1  # once per process, not per layer


def test_strict_mode_raises_where_generic_falls_back():
    model = _pair("llama")[0]
    with pytest.raises(eet_hf.EetUnsupportedError, match="strict"):
        eet_hf.accelerate(model, strict=True)
    assert all("forward" not in m.__dict__ for m in model.modules()), "a failed accelerate must undo its changes"


def test_training_mode_runs_hf_forwards():
    model, ref, side, _ = _pair("gpt_neox")
    eet_hf.accelerate(model)
    model.train()
    ids = torch.randint(7, 100, (2, 6))
    out = model(ids, labels=ids)
    expected = ref.train()(ids, labels=ids)
    assert torch.allclose(out.loss, expected.loss, atol=1e-5)
    assert all(m._eet_check.state == "pending" for m in model.modules() if "_eet_check" in m.__dict__)


class _PlainConfig(tf.PretrainedConfig):
    model_type = "eet-test-plain"


class _PlainModel(tf.PreTrainedModel):
    """A model eet recognises nothing in: no attention interface, no norms, no GELU MLP."""

    config_class = _PlainConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.proj(x))


def test_model_with_nothing_to_accelerate_warns_once_and_is_unchanged(caplog):
    model = _PlainModel(_PlainConfig()).eval()
    before_config, before_attn = model.config, model.config._attn_implementation
    x = torch.randn(3, 8)
    expected = model(x)
    with caplog.at_level(logging.WARNING, logger="eet_hf"):
        assert eet_hf.accelerate(model) is model
    assert caplog.text.count("left unchanged") == 1, caplog.text
    assert model.config is before_config and model.config._attn_implementation == before_attn
    assert all(not {"forward", "_eet_check"} & set(m.__dict__) for m in model.modules())
    report = eet_hf.explain(model)
    assert report.accelerated == [] and "nothing eet recognises" in report.fallbacks["<model>"]
    assert "AttentionInterface" in report.fallbacks["attention"]
    assert torch.equal(model(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rms_norm_reference_is_bitwise_llama_rmsnorm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(83, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(7, 5, 83) * 3).to(dtype)
    assert torch.equal(ops.rms_norm(x, norm.weight, 1e-6), norm(x))


def test_rms_norm_opcheck():
    x, w = torch.randn(4, 3, 40), torch.randn(40)
    torch.library.opcheck(torch.ops.eet.rms_norm.default, (x, w, 1e-5))
