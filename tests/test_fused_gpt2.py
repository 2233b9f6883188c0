"""GPT-2 through the fused decoder step (patches/decoder_records.py GPT2, eet_hf/engine/fused_decoder.py), on the CPU:
the ops' references, so tokens must equal HF's exactly. Conv1D weights become transposed views of [out, in] matrices
(engine/packing.py `transposed`): no extra memory, the same state_dict and checkpoints. What the record does not
describe keeps eet's lean GPT-2 forward in the engine, with the reason in explain()."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import eet_hf
from eet_hf.engine import fused_decoder
from eet_hf.engine.generate import ENGINE_ATTR
from eet_hf.engine.gpt2_forward import GPT2Weights
from eet_hf.engine.packing import transposed
from eet_hf.models import default_model_path

from .helpers import padded_batch, randomize_layer_norms

VOCAB = 97
# What the record refuses, each with the reason explain() gives.
REFUSED = {
    "inverse-layer-scale": (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    "upcast-reordered": (dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
    "erf-gelu": (dict(activation_function="gelu"), "is not down(act(up(x)))".replace("act", "gelu_new")),
}


def _tiny(**overrides) -> GPT2LMHeadModel:
    """Random LayerNorm parameters (HF's 1 / 0 would hide a swapped weight and bias) and a wide init, so a misplaced
    norm or scale changes greedy tokens."""
    torch.manual_seed(0)
    config = GPT2Config(**{**dict(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128,
                                  initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0), **overrides})
    return randomize_layer_norms(GPT2LMHeadModel(config).eval())


def _engine_view(model):
    return model.__dict__[ENGINE_ATTR].view


def _generate_both(model, hf, vocab: int = VOCAB, **extra):
    ids, mask = padded_batch(3, 9, [9, 4, 1], "left", vocab=vocab)
    kwargs = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0, **extra)
    with torch.no_grad():
        return model.generate(ids, **kwargs), hf.generate(ids, **kwargs)


@pytest.mark.parametrize("which", ["tiny", "trained"])
def test_fused_step_gives_hf_tokens_on_left_padded_batches(which):
    if which == "tiny":
        hf, vocab = _tiny(), VOCAB
    else:
        hf, vocab = GPT2LMHeadModel.from_pretrained(default_model_path("gpt2")).eval(), 4096
    model = eet_hf.accelerate(copy.deepcopy(hf))
    assert any(line.startswith("decoder step (eet fused: LayerNorm + packed QKV + KV write, gelu_new MLP")
               for line in eet_hf.explain(model).accelerated), eet_hf.explain(model)
    got, want = _generate_both(model, hf, vocab)
    assert torch.equal(got, want)
    assert isinstance(_engine_view(model), fused_decoder.FusedDecoder)


@pytest.mark.parametrize("variant", sorted(REFUSED))
def test_what_the_record_refuses_keeps_the_lean_forward_and_hf_tokens(variant):
    overrides, reason = REFUSED[variant]
    hf = _tiny(**overrides)
    model = eet_hf.accelerate(copy.deepcopy(hf))
    if variant == "upcast-reordered":  # not in eet's loop at all: HF's loop on eet's forwards
        assert reason in eet_hf.explain(model).fallbacks["generate"], eet_hf.explain(model)
        assert ENGINE_ATTR not in model.__dict__
        return
    assert reason in eet_hf.explain(model).fallbacks["decoder step"], eet_hf.explain(model)
    got, want = _generate_both(model, hf)
    assert torch.equal(got, want)
    assert isinstance(_engine_view(model), GPT2Weights)
    assert model.transformer.h[0].attn.c_attn.weight.is_contiguous(), "a refused model's weights were re-laid out"


def test_conv1d_weights_become_transposed_views_without_extra_memory(tmp_path):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = sum(p.numel() for p in model.parameters())
    fused_decoder.pack(model)
    block = model.transformer.h[1]
    for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        weight = conv.weight
        assert isinstance(weight, torch.nn.Parameter) and weight.t().is_contiguous() and not weight.is_contiguous()
        assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()  # held once
    assert sum(p.numel() for p in model.parameters()) == params_before
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    # The engine lays out again on every build: no copy once transposed.
    matrix, _ = transposed(block.mlp.c_fc)
    assert matrix.data_ptr() == block.mlp.c_fc.weight.data_ptr() and matrix.shape == (4 * 64, 64)
    model.save_pretrained(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())
    assert loaded.transformer.h[1].mlp.c_fc.weight.is_contiguous()


def test_moved_model_stays_transposed_and_gives_the_same_tokens():
    model = eet_hf.accelerate(_tiny())
    ids = torch.randint(3, VOCAB, (1, 5))
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    first = model.generate(ids, **kwargs)
    model.to(torch.float64).to(torch.float32)  # new storages; .to() keeps a dense tensor's strides
    assert model.transformer.h[0].mlp.c_fc.weight.t().is_contiguous()
    assert torch.equal(model.generate(ids, **kwargs), first)
    assert isinstance(_engine_view(model), fused_decoder.FusedDecoder)


def test_restore_and_hf_forward_keep_hf_outputs():
    hf = _tiny()
    model = eet_hf.accelerate(copy.deepcopy(hf))
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)  # eet's forward, HF layout
        eet_hf.restore(model)
        assert torch.equal(model(ids).logits, hf(ids).logits)


def test_kernel_check_failure_falls_back_to_the_lean_forward(monkeypatch, caplog):
    monkeypatch.setattr(fused_decoder, "kernel_check", lambda view: "its kernels' logits differ (simulated)")
    hf = _tiny()
    model = eet_hf.accelerate(copy.deepcopy(hf))
    with caplog.at_level("WARNING", logger="eet_hf"):
        got, want = _generate_both(model, hf)
    assert torch.equal(got, want)
    assert isinstance(_engine_view(model), GPT2Weights)
    assert "simulated" in caplog.text and "gpt2_weights" in caplog.text
