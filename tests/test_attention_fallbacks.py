"""eet attention's fallbacks go to the attention implementation the model was loaded with (eager stays eager, sdpa
stays sdpa), and to the model's own eager attention when weights are asked for: softcapping (Gemma-2), sliding
windows and padding with holes under output_attentions, training with attention dropout, left padding of eager
models, and full-graph torch.compile of a forward that takes a fallback. Accelerated vs an unpatched deep copy, CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

import eet_hf
import eet_hf.attention as eet_attention
from eet_hf import ops

from .helpers import assert_close, bert_config, gpt2_config, padded_batch

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
WEIGHTS_ATOL = 1e-6  # attention weights: the fallback runs HF's own eager function on HF's own mask
_SPECIAL = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, **_SPECIAL)


def _config(name: str, **overrides):
    if name == "gemma2":
        return tf.Gemma2Config(**{"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4, **_DECODER, **overrides})
    if name == "mistral":
        return tf.MistralConfig(num_key_value_heads=2, **{**_DECODER, **overrides})
    if name == "qwen2":
        layers = ["sliding_attention"] * _DECODER["num_hidden_layers"]
        return tf.Qwen2Config(num_key_value_heads=1, use_sliding_window=True, layer_types=layers,
                              **{**_DECODER, **overrides})
    if name == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **{**_DECODER, **overrides})
    if name == "gpt_neox":
        return tf.GPTNeoXConfig(**{**_DECODER, **overrides})
    if name == "opt":
        return tf.OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                            max_position_embeddings=128, word_embed_proj_dim=64, **{**_SPECIAL, **overrides})
    if name == "gpt2":
        return gpt2_config(**overrides)
    if name == "bert":
        return bert_config(**overrides)
    raise ValueError(name)


_CLASSES = {"gemma2": tf.Gemma2ForCausalLM, "mistral": tf.MistralForCausalLM, "qwen2": tf.Qwen2ForCausalLM,
            "llama": tf.LlamaForCausalLM, "gpt_neox": tf.GPTNeoXForCausalLM, "opt": tf.OPTForCausalLM,
            "gpt2": tf.GPT2LMHeadModel, "bert": tf.BertForMaskedLM}


def _pair(name: str, attn: str, **overrides):
    """(model to accelerate, untouched deep copy), both loaded with attention implementation `attn`, eval mode."""
    model = _CLASSES[name](_config(name, attn_implementation=attn, **overrides)).eval()
    assert model.config._attn_implementation == attn
    return model, copy.deepcopy(model)


class _Spy:
    """Counts eet kernel calls, HF sdpa fallbacks and calls of the model's own eager attention function made for the
    accelerated model's modules (the unpatched copy calls the same functions)."""

    def __init__(self, monkeypatch, model):
        self.kernel = self.sdpa = self.eager = 0
        self._modules = set(model.modules())
        real_attention, real_sdpa = ops.attention, eet_attention._sdpa

        def attention(*args, **kwargs):
            self.kernel += 1
            return real_attention(*args, **kwargs)

        def sdpa(*args, **kwargs):
            self.sdpa += 1
            return real_sdpa(*args, **kwargs)

        monkeypatch.setattr(ops, "attention", attention)
        monkeypatch.setattr(eet_attention, "_sdpa", sdpa)
        for name in {type(m).__module__ for m in model.modules()}:
            module = __import__(name, fromlist=["eager_attention_forward"])
            real_eager = getattr(module, "eager_attention_forward", None)
            if real_eager is not None:
                monkeypatch.setattr(module, "eager_attention_forward", self._count(real_eager))

    def _count(self, real):
        def eager(module, *args, **kwargs):
            self.eager += module in self._modules
            return real(module, *args, **kwargs)

        return eager


def _left_padded(lengths=(9, 6, 2), length=9):
    ids, mask = padded_batch(len(lengths), length, list(lengths), "left")
    return ids, mask


# --- item 2: softcapping (Gemma-2) goes to the implementation the model was loaded with --------------------------

def test_softcap_model_falls_back_to_its_eager_attention_and_matches(monkeypatch):
    model, ref = _pair("gemma2", "eager")
    assert model.config.attn_logit_softcapping is not None
    eet_hf.accelerate(model)
    assert model.model.config._attn_implementation == "eet"  # the modules' view; model.config stays the user's
    spy = _Spy(monkeypatch, model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(got, expected, FP32_ATOL, where=mask.bool().unsqueeze(-1))
    assert spy.eager == model.config.num_hidden_layers and spy.sdpa == 0 and spy.kernel == 0
    kwargs = dict(attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sliding_window_fallback_keeps_the_loaded_implementation(attn, monkeypatch):
    model, ref = _pair("mistral", attn, sliding_window=4)
    eet_hf.accelerate(model)
    spy = _Spy(monkeypatch, model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(got, expected, FP32_ATOL, where=mask.bool().unsqueeze(-1))
    layers = model.config.num_hidden_layers
    assert (spy.eager, spy.sdpa) == ((layers, 0) if attn == "eager" else (0, layers)) and spy.kernel == 0


def test_module_without_a_record_falls_back_to_its_eager_attention(monkeypatch):
    # A model built from an accelerated model's inner config view (which names eet attention; no accelerate() call
    # recorded what it was loaded with): HF's eager attention accepts every option the model's attention passes.
    model, ref = _pair("gemma2", "eager")
    eet_hf.accelerate(model)
    other = tf.Gemma2ForCausalLM(model.model.config).eval()
    other.load_state_dict(ref.state_dict())
    assert other.model.config._attn_implementation == "eet"
    ids = torch.randint(7, 100, (2, 7))
    with torch.no_grad():
        assert_close(other(ids).logits, ref(ids).logits, FP32_ATOL)


def test_the_record_follows_copies_and_restore_removes_it():
    model, ref = _pair("gemma2", "eager")
    eet_hf.accelerate(model)
    clone = copy.deepcopy(model)  # the record lives on the modules, so a copy keeps it
    ids = torch.randint(7, 100, (2, 7))
    with torch.no_grad():
        assert_close(clone(ids).logits, ref(ids).logits, FP32_ATOL)
    eet_hf.restore(model)
    assert not [m for m in model.modules() if eet_attention.LOADED_ATTN_ATTR in m.__dict__]
    assert model.config._attn_implementation == "eager"


# --- item 6: output_attentions with a mask tensor (sliding window, padding with holes) ------------------------------

@pytest.mark.parametrize("name", ["mistral", "qwen2", "gemma2"])
def test_sliding_window_attentions_are_hf_eager_weights(name):
    model, ref = _pair(name, "eager", sliding_window=4)
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, WEIGHTS_ATOL)
    assert_close(got.logits, expected.logits, FP32_ATOL)


def test_padding_with_holes_attentions_are_hf_eager_weights():
    model, ref = _pair("llama", "eager")
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 6))
    mask = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        got = model(ids, attention_mask=mask, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, WEIGHTS_ATOL)


def test_sdpa_model_asked_for_attentions_under_a_sliding_window_gets_hf_eager_weights():
    # HF's sdpa returns no weights; eet gives the weights HF's eager attention computes (as for plain masks).
    model, ref = _pair("mistral", "sdpa", sliding_window=4)
    ref.set_attn_implementation("eager")
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, WEIGHTS_ATOL)


# --- item 10: left-padded decoders loaded with eager ------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gpt2", "opt"])
def test_eager_left_padding_matches_hf_at_padding_positions_and_in_the_loss(name, monkeypatch):
    # HF eager gives a padding query (no visible key) a uniform softmax over all keys: the mean of V. eet's kernel
    # writes 0 there; eet replaces those rows with the mean of V, so loss over labels at padding matches HF.
    model, ref = _pair(name, "eager")
    eet_hf.accelerate(model)
    spy = _Spy(monkeypatch, model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
        expected = ref(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    assert spy.kernel == model.config.num_hidden_layers and spy.eager == spy.sdpa == 0
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert_close(a, b, FP32_ATOL)
    assert_close(got.logits, expected.logits, FP32_ATOL)
    assert_close(got.loss, expected.loss, 1e-5)


def test_sdpa_left_padding_gives_zero_at_padding_like_hf_sdpa():
    # HF's sdpa returns 0 for a query that sees no key; so does eet (DESIGN.md: finite, 0).
    model, ref = _pair("llama", "sdpa")
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
        expected = ref(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert_close(a, b, FP32_ATOL)
    assert_close(got.loss, expected.loss, 1e-5)


def test_all_padding_sequence_stays_finite_under_eager():
    model, ref = _pair("llama", "eager")
    eet_hf.accelerate(model)
    ids = torch.randint(7, 100, (2, 5))
    mask = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(got, expected, FP32_ATOL)


# --- item 13: a fallback inside torch.compile(fullgraph=True) ----------------------------------------------------

def _custom_4d_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.tril(torch.ones(length, length, dtype=torch.bool)).expand(batch, 1, length, length).clone()
    mask[0, 0, length - 1, 1] = False  # a hole no bounds describe
    return mask


@pytest.mark.parametrize("name, branch", [("qwen2", "sliding window"), ("gpt_neox", "custom 4D mask"),
                                          ("gpt_neox", "training dropout")])
def test_fullgraph_compile_of_a_forward_that_falls_back(name, branch):
    overrides = {"sliding window": {"sliding_window": 4}, "training dropout": {"attention_dropout": 0.5}}
    model, ref = _pair(name, "eager", **overrides.get(branch, {}))
    if branch == "training dropout":
        model.train(), ref.train()
    eet_hf.accelerate(model)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # dynamo's tracing is what refused eet
    ids = torch.randint(7, 100, (2, 9))
    kwargs = {"attention_mask": _custom_4d_mask(2, 9)} if branch == "custom 4D mask" else {}
    with torch.set_grad_enabled(branch == "training dropout"):
        torch.manual_seed(1)
        got = compiled(ids, **kwargs).logits
        torch.manual_seed(1)
        expected = ref(ids, **kwargs).logits
    assert_close(got, expected, FP32_ATOL)


def test_warn_once_is_silent_while_compiling(caplog, monkeypatch):
    from eet_hf._log import warn_once

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    warn_once("a message only the compile-time check may see")
    assert "only the compile-time check" not in caplog.text


# --- item 15: training with attention dropout ---------------------------------------------------------------------

_DROPOUT = {"gpt2": {"attn_pdrop": 0.5}, "bert": {"attention_probs_dropout_prob": 0.5},
            "llama": {"attention_dropout": 0.5}, "gpt_neox": {"attention_dropout": 0.5},
            "opt": {"attention_dropout": 0.5}}


@pytest.mark.parametrize("name", list(_DROPOUT))
def test_training_with_attention_dropout_keeps_eager_and_its_weights(name, monkeypatch):
    model, ref = _pair(name, "eager", **_DROPOUT[name])
    model.train(), ref.train()
    eet_hf.accelerate(model)
    spy = _Spy(monkeypatch, model)
    ids = torch.randint(7, 100, (2, 7))
    outputs = []
    for m in (model, ref):
        torch.manual_seed(3)  # same dropout masks on both sides: the same functions draw them in the same order
        out = m(ids, output_attentions=True)
        for weights in out.attentions:
            weights.retain_grad()
        out.logits.sum().backward()
        outputs.append(out)
    got, expected = outputs
    assert spy.sdpa == 0 and spy.eager == model.config.num_hidden_layers
    assert len(got.attentions) == len(expected.attentions) == model.config.num_hidden_layers
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, WEIGHTS_ATOL)
        assert a.grad is not None
        assert_close(a.grad, b.grad, FP32_ATOL)
    assert_close(got.logits, expected.logits, FP32_ATOL)


# --- a module whose modeling file has no eager attention ----------------------------------------------------------

class _PlainAttention(torch.nn.Module):
    """An attention module outside transformers (its module defines no eager_attention_forward)."""

    is_causal = True


def test_module_without_an_eager_function_gets_hf_formula_eager_attention():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.zeros(2, 1, 5, 5).masked_fill(~torch.tril(torch.ones(5, 5, dtype=torch.bool)), -1e9)
    out, weights = eet_attention.eet_attention(_PlainAttention(), query, key, value, mask, scaling=0.25)
    k, v = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
    expected_weights = torch.softmax(query @ k.transpose(2, 3) * 0.25 + mask, dim=-1)
    assert_close(weights, expected_weights, WEIGHTS_ATOL)
    assert_close(out, (expected_weights @ v).transpose(1, 2), WEIGHTS_ATOL)
    with pytest.raises(eet_hf.EetUnsupportedError, match="softcap"):
        eet_attention.eet_attention(_PlainAttention(), query, key, value, mask, softcap=30.0)
