"""eet attention's fallbacks on the GPU (fp32, eet's CUDA kernels where no fallback applies): softcapping runs the
model's eager attention, output_attentions under a sliding window gives HF's eager weights, and an eager-loaded
left-padded decoder matches HF eager at padding positions and in the loss (tests/test_attention_fallbacks.py on
CPU covers the same with the reference ops)."""

from __future__ import annotations

import copy

import torch
import transformers as tf

import eet_hf

from ..helpers import assert_close, padded_batch

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
WEIGHTS_ATOL = 1e-5  # attention weights: HF's own eager function on HF's own mask, on both sides
_DECODER = dict(vocab_size=1000, pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_size=256,
                intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=512, initializer_range=0.1)


def _pair(cls, config) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = cls(config).to("cuda").eval()
    return model, copy.deepcopy(model)


def _left_padded():
    ids, mask = padded_batch(3, 40, [40, 23, 5], "left", vocab=1000)
    return ids.cuda(), mask.cuda()


def test_softcap_model_runs_its_eager_attention_on_cuda(cuda_ops):
    model, ref = _pair(tf.Gemma2ForCausalLM, tf.Gemma2Config(head_dim=64, sliding_window=16,
                                                             attn_implementation="eager", **_DECODER))
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got, expected = model(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
    assert_close(got, expected, FP32_ATOL, where=mask.bool().unsqueeze(-1))
    kwargs = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))


def test_sliding_window_attentions_are_hf_eager_weights_on_cuda(cuda_ops):
    model, ref = _pair(tf.MistralForCausalLM, tf.MistralConfig(sliding_window=16, attn_implementation="eager",
                                                               **_DECODER))
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, output_attentions=True)
        expected = ref(ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == len(expected.attentions) == 2
    for a, b in zip(got.attentions, expected.attentions):
        assert_close(a, b, WEIGHTS_ATOL)


def test_eager_left_padding_matches_hf_at_padding_positions_on_cuda(cuda_ops):
    model, ref = _pair(tf.LlamaForCausalLM, tf.LlamaConfig(attn_implementation="eager", **_DECODER))
    eet_hf.accelerate(model)
    ids, mask = _left_padded()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
        expected = ref(ids, attention_mask=mask, labels=ids, output_hidden_states=True)
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert_close(a, b, FP32_ATOL)
    assert_close(got.loss, expected.loss, 1e-4)
