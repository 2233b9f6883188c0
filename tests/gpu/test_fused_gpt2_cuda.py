"""GPT-2 through eet's fused decoder step on the GPU (eet_hf/engine/fused_decoder.py with the GPT-2 record: Conv1D
weights as transposed views, LayerNorm prologues, unrotated QKV + KV write, c_fc + gelu_new, the LM head over a
vocabulary that is not a multiple of 16), against HF in the same run.

The fused step is what runs (explain(), the engine's view, exactly the kernels below) and its kernels pass the
build's probe step. fp32: greedy tokens equal HF's and logits within 1e-4. fp16/bf16 on the embedded *trained* GPT-2:
greedy agreement with the fp32 model at least HF eager's and sdpa's (the parity rule); on full-width random weights
(head_dim 64, hidden 768): logits off the fp32 model's by at most twice HF sdpa's.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import eet_hf
from eet_hf.engine import fused_decoder
from eet_hf.engine.generate import ENGINE_ATTR
from eet_hf.models import default_model_path

from ..helpers import padded_batch, randomize_layer_norms
from .conftest import record_decode_kernel_calls
from .fused_checks import assert_fp32_generate_equals_hf, assert_half_logits_track_fp32

RANDOM_VOCAB = 1000  # not a multiple of 16: the LM head's last tile is partial


def _random(dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.GPT2Config(n_embd=768, n_layer=2, n_head=12, vocab_size=RANDOM_VOCAB, n_positions=256,
                           initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = randomize_layer_norms(tf.GPT2LMHeadModel(config))
    model.set_attn_implementation(attn)
    return model.to("cuda", dtype).eval()


def _trained(dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    model = tf.GPT2LMHeadModel.from_pretrained(default_model_path("gpt2"), dtype=dtype, attn_implementation=attn)
    return model.to("cuda").eval()


def _engine(model):
    return model.__dict__[ENGINE_ATTR]


def _batch(lengths: list[int], width: int, vocab: int):
    ids, mask = padded_batch(len(lengths), width, lengths, "left", vocab=vocab)
    return ids.cuda(), mask.cuda()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_step_runs_its_kernels_in_graphs(cuda_ops, dtype, monkeypatch):
    model = eet_hf.accelerate(_random(dtype))
    assert any(line.startswith("decoder step (eet fused: LayerNorm") for line in eet_hf.explain(model).accelerated), (
        eet_hf.explain(model))
    c_attn = model.transformer.h[0].attn.c_attn.weight
    assert c_attn.shape == (768, 3 * 768) and c_attn.t().is_contiguous(), "Conv1D weights are not transposed views"
    calls = record_decode_kernel_calls(monkeypatch)
    ids, mask = _batch([20, 7, 1], 20, RANDOM_VOCAB)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    handle = _engine(model)
    assert isinstance(handle.view, fused_decoder.FusedDecoder), "the build's kernel check sent GPT-2 elsewhere"
    assert handle.engine.stats["graphs_captured"] >= 1 and handle.engine.stats["graph_replays"] > 0, handle.engine.stats
    # LayerNorm + QKV + KV write (no rotary, q unscaled); LayerNorm + c_fc + gelu_new; ln_f + LM head (1000 rows);
    # c_proj + residual twice per layer. Nothing else.
    assert calls == {("decode_qkv_rope", "layer", "q_scale 1"), ("decode_linear", "layer", "gelu_new"),
                     ("decode_linear", "layer", "none"), ("decode_linear", "none", "residual")}, calls
    monkeypatch.undo()
    assert fused_decoder.kernel_check(handle.view) is None


@pytest.mark.parametrize("which", ["random", "trained"])
def test_fp32_logits_and_tokens_equal_hf(cuda_ops, which):
    make, vocab = (_random, RANDOM_VOCAB) if which == "random" else (_trained, 4096)
    assert_fp32_generate_equals_hf(make(torch.float32), *_batch([30, 17, 4, 1], 30, vocab))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_logits_track_fp32_through_the_fused_step(cuda_ops, dtype):
    """32 left-padded prompts x 16 decode steps on full-width random weights: eet's logits against the fp32 model's on
    the same sequences are off by at most twice what HF sdpa's are in the same dtype. The reference forwards get the
    position ids generate uses (counted from each row's first real token): a plain GPT-2 forward counts from the
    padding instead (an H100 run without them measured every engine's error against the wrong reference)."""
    assert_half_logits_track_fp32(_random(dtype), _random(torch.float32),
                                  *_batch([24 - (i % 20) for i in range(32)], 24, RANDOM_VOCAB), positions=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_trained_greedy_agreement_with_fp32_at_least_hf(cuda_ops, dtype):
    """The embedded trained GPT-2, 16 left-padded prompts x 32 new tokens: positions where greedy tokens equal the
    fp32 model's, for eet, HF eager and HF sdpa in the same dtype; eet's count is at least the lower of HF's."""
    fp32 = _trained(torch.float32)
    ids, mask = _batch([40 - 2 * i for i in range(16)], 40, 4096)
    kwargs = dict(attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = fp32.generate(ids, **kwargs)
        agree = {}
        for name, model in (("eager", _trained(dtype, "eager")), ("sdpa", _trained(dtype, "sdpa")),
                            ("eet", eet_hf.accelerate(_trained(dtype)))):
            agree[name] = int((model.generate(ids, **kwargs) == want)[:, ids.shape[1]:].sum())
            if name == "eet":
                assert isinstance(_engine(model).view, fused_decoder.FusedDecoder)
    assert agree["eet"] >= min(agree["eager"], agree["sdpa"]), agree


def test_state_dict_and_save_pretrained_are_unchanged(cuda_ops, tmp_path):
    hf = _trained(torch.float16)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    model = eet_hf.accelerate(hf)
    ids, mask = _batch([8, 3], 8, 4096)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(tmp_path)
    loaded = tf.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float16).cuda()
    assert all(torch.equal(v, after[k]) for k, v in loaded.state_dict().items())
