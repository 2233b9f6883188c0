"""The generic path on the GPU: eet::rms_norm's kernel against its reference, and the generic families against
unpatched HF (sdpa where the family has it) in the same run.

fp32: logits within 1e-4 and greedy tokens identical (DESIGN.md). fp16/bf16: eet's logit error against an fp32 HF
run is at most twice HF's own error in that dtype (+1e-3), and greedy tokens agree with HF sdpa at least as often
as HF eager's do. Weights are random (initializer_range 0.1, so logits are not flat and greedy is decisive).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

import eet_hf
from eet_hf import ops

from ..helpers import padded_batch
from .conftest import poison_next_alloc

VOCAB = 1000
_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.1)
_DECODER = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512, **_COMMON)
_ENCODER = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                max_position_embeddings=512, **_COMMON)

# name -> (model class, config factory, padding side)
FAMILIES = {
    "roberta": (tf.RobertaForMaskedLM, lambda: tf.RobertaConfig(**{**_ENCODER, "pad_token_id": 1}), "right"),
    "distilbert": (tf.DistilBertForMaskedLM, lambda: tf.DistilBertConfig(
        dim=256, n_layers=2, n_heads=4, hidden_dim=512, max_position_embeddings=512, vocab_size=VOCAB,
        pad_token_id=0, initializer_range=0.1), "right"),
    "electra": (tf.ElectraForMaskedLM, lambda: tf.ElectraConfig(embedding_size=128, **_ENCODER), "right"),
    "gpt_neo": (tf.GPTNeoForCausalLM, lambda: tf.GPTNeoConfig(
        hidden_size=256, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=32,
        max_position_embeddings=512, **_COMMON), "left"),
    "gpt_neox": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(**_DECODER), "left"),
    "opt": (tf.OPTForCausalLM, lambda: tf.OPTConfig(
        hidden_size=256, num_hidden_layers=2, ffn_dim=512, num_attention_heads=4, max_position_embeddings=512,
        word_embed_proj_dim=256, **{k: v for k, v in _COMMON.items() if k != "initializer_range"},
        init_std=0.1), "left"),
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(num_key_value_heads=2, **_DECODER), "left"),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(num_key_value_heads=2, **_DECODER), "left"),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(num_key_value_heads=1, **_DECODER), "left"),
}
DECODERS = [name for name, spec in FAMILIES.items() if spec[2] == "left"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _model(name: str, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    cls, make_config, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = cls(make_config())
    if not getattr(type(model), "_supports_sdpa", False):
        attn = "eager"  # GPT-Neo: HF has no sdpa path for it
    model.set_attn_implementation(attn)
    return model.to("cuda", dtype).eval()


def _max_err(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a.double() - b.double())[mask.bool()].abs().max().item()


# --- eet::rms_norm kernel ----------------------------------------------------------------------------------------

# fp32: only the order of the mean's summation differs; fp16/bf16: that can flip one rounding (1 ulp).
RMS_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 83])
@pytest.mark.parametrize("hidden", [8, 64, 769, 1000, 4096, 5125, 20000])
def test_rms_norm_kernel_matches_reference(cuda_ops, dtype, rows, hidden):
    x = (torch.randn(rows, hidden, device="cuda") * 3).to(dtype)
    w = torch.randn(hidden, device="cuda").to(dtype)
    expected = ops.reference.rms_norm(x, w, 1e-6)
    poison_next_alloc(x.numel(), dtype)
    got = torch.ops.eet.rms_norm(x, w, 1e-6)
    assert torch.isfinite(got).all(), "NaN left in the output: the kernel skipped elements"
    rtol, atol = RMS_TOL[dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_rms_norm_kernel_misaligned_and_strided_input(cuda_ops, dtype):
    hidden = 4096
    buf = torch.randn(5 * hidden + 1, device="cuda").to(dtype)
    x = buf[1:].view(5, hidden)  # base pointer off 16-byte alignment: the scalar kernels
    w = torch.randn(hidden, device="cuda").to(dtype)
    rtol, atol = RMS_TOL[dtype]
    torch.testing.assert_close(torch.ops.eet.rms_norm(x, w, 1e-5), ops.reference.rms_norm(x, w, 1e-5),
                               rtol=rtol, atol=atol)
    strided = torch.randn(5, 2 * hidden, device="cuda").to(dtype)[:, ::2]
    torch.testing.assert_close(torch.ops.eet.rms_norm(strided, w, 1e-5),
                               ops.reference.rms_norm(strided, w, 1e-5), rtol=rtol, atol=atol)


def test_rms_norm_opcheck_and_clear_errors(cuda_ops):
    x, w = torch.randn(4, 3, 64, device="cuda"), torch.randn(64, device="cuda")
    torch.library.opcheck(torch.ops.eet.rms_norm.default, (x, w, 1e-5))
    # Bad arguments to the raw op: test_embedding_kv_cuda.py::test_raw_op_argument_error_raises_without_crashing
    # (in a subprocess: an error thrown by a CUDA op implementation crashed the process on the H200).


# --- models ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_logits(cuda_ops, name, dtype):
    hf, fp32 = _model(name, dtype), _model(name, torch.float32)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert eet_hf.explain(model).kernels == "cuda"
    ids, mask = padded_batch(4, 96, [96, 50, 7, 1], FAMILIES[name][2], vocab=VOCAB)
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        base, truth = hf(ids, attention_mask=mask).logits, fp32(ids, attention_mask=mask).logits
        model(ids, attention_mask=mask)  # first call: the checks decide; the second runs eet's ops
        got = model(ids, attention_mask=mask).logits
    assert torch.isfinite(got).all(), "NaN/Inf in eet logits (padded rows included)"
    report = eet_hf.explain(model)
    assert not [p for p, why in report.fallbacks.items() if "first-call check" in why], report.fallbacks
    if dtype == torch.float32:
        if _max_err(got, base, mask) > 1e-4:
            # Farther than 1e-4 from HF's fp32 logits (GPT-Neo: unscaled attention scores, large logits): then
            # eet must be about as close to the fp64 model as HF's fp32 is (within 2x, as for the other dtypes).
            with torch.no_grad():
                truth64 = _model(name, torch.float64)(ids, attention_mask=mask).logits
            assert _max_err(got, truth64, mask) <= 2 * _max_err(base, truth64, mask)
    else:
        assert _max_err(got, truth, mask) <= 2 * _max_err(base, truth, mask) + 1e-3


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_greedy_agreement(cuda_ops, name, dtype):
    """32 left-padded prompts x 32 tokens; eet agrees with HF sdpa at least as often as HF eager does."""
    sdpa, eager = _model(name, dtype, "sdpa"), _model(name, dtype, "eager")
    model = eet_hf.accelerate(copy.deepcopy(sdpa))
    ids, mask = padded_batch(32, 24, [24 - (i % 20) for i in range(32)], "left", vocab=VOCAB)
    ids, mask = ids.cuda(), mask.cuda()
    kwargs = dict(attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        outs = {engine: m.generate(ids, **kwargs) for engine, m in (("eet", model), ("sdpa", sdpa), ("eager", eager))}
    agree = {engine: (outs[engine] == outs["sdpa"]).all(-1).float().mean().item() for engine in ("eet", "eager")}
    if dtype == torch.float32:
        assert agree["eet"] == 1.0, agree
    else:
        assert agree["eet"] >= agree["eager"], agree
