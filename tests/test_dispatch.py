"""accelerate's placement hooks (dispatch_model / device_map, cpu_offload) with eet's rewiring, in both orders.

accelerate wraps a module's forward (keeping the real one in `_old_forward`) to move inputs to the module's
device and, when offloading, to load its weights just for its own call. On CPU the hooks are the same as on
GPUs (execution device "cpu"; force_hooks where accelerate would otherwise skip them), so this checks that the
hooks keep running, that eet's fused forward is what they run, that offloaded weights are loaded for it, and that
restore() leaves the hooks in place.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import send_to_device
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import eet_hf
from eet_hf import ops
from eet_hf.bounds import from_padding_mask

from .helpers import assert_close, gpt2_config, padded_batch

FP32_ATOL = 1e-4  # DESIGN.md: fp32 paths match HF within 1e-4 on logits
GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
MODULES = ["transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h.0", "transformer.h.1",
           "transformer.ln_f", "lm_head"]


def _place(model, how: str, tmp_path):
    """Hooks as a multi-device placement installs them, every execution device being the CPU."""
    if how == "device_map":  # AlignDevicesHook per block, weights in place
        return dispatch_model(model, device_map=dict.fromkeys(MODULES, "cpu"), force_hooks=True)
    if how == "disk_offload":  # block 1's weights on disk, loaded per leaf module while it runs
        device_map = {**dict.fromkeys(MODULES, "cpu"), "transformer.h.1": "disk"}
        return dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "offload"))
    if how == "cpu_offload":  # every weight on meta between calls
        return cpu_offload(model, execution_device="cpu")
    raise ValueError(how)


@pytest.fixture
def eet_calls(monkeypatch):
    """How often eet's fused GPT-2 block ran (add_layer_norm is called by it alone)."""
    calls = {"add_layer_norm": 0}
    original = ops.add_layer_norm

    def counted(*args, **kwargs):
        calls["add_layer_norm"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "add_layer_norm", counted)
    return calls


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("order", ["place_then_accelerate", "accelerate_then_place"])
@pytest.mark.parametrize("how", ["device_map", "disk_offload", "cpu_offload"])
def test_hooks_move_tensors_and_eet_forward_runs(how, order, eet_calls, tmp_path):
    hf = GPT2LMHeadModel(gpt2_config()).eval()
    plain = eet_hf.accelerate(copy.deepcopy(hf))  # the accelerated model without hooks
    model = copy.deepcopy(hf)
    if order == "place_then_accelerate":
        model = eet_hf.accelerate(_place(model, how, tmp_path))
    else:
        model = _place(eet_hf.accelerate(model), how, tmp_path)
    block = model.transformer.h[1]
    ids, mask = padded_batch(3, 10, [10, 6, 2], "left")
    real = mask.bool()[..., None]

    expected = _logits(plain, ids, mask)
    before = eet_calls["add_layer_norm"]
    got = _logits(model, ids, mask)
    assert eet_calls["add_layer_norm"] - before == 2, "eet's fused block forward did not run under the hooks"
    assert_close(got, expected, FP32_ATOL, where=real)
    assert_close(got, _logits(hf, ids, mask), FP32_ATOL, where=real)
    assert torch.equal(model.generate(ids, attention_mask=mask, **GREEDY), hf.generate(ids, attention_mask=mask,
                                                                                          **GREEDY))
    if how != "device_map":  # offloaded weights went back off-device after the call
        assert block.ln_2.weight.device.type == "meta"

    eet_hf.restore(model)
    hooked = [m for m in model.modules() if "_hf_hook" in m.__dict__]
    assert hooked and all("forward" in m.__dict__ and "_old_forward" in m.__dict__ for m in hooked), \
        "restore() removed accelerate's hook wrappers"
    before = eet_calls["add_layer_norm"]
    assert_close(_logits(model, ids, mask), _logits(hf, ids, mask), FP32_ATOL, where=real)
    assert eet_calls["add_layer_norm"] == before, "eet's forward still runs after restore()"


def test_hooks_removed_after_accelerate_then_restore_gives_hf(eet_calls):
    hf = GPT2LMHeadModel(gpt2_config()).eval()
    model = eet_hf.accelerate(dispatch_model(copy.deepcopy(hf), dict.fromkeys(MODULES, "cpu"), force_hooks=True))
    remove_hook_from_module(model, recurse=True)  # accelerate puts eet's forward back as `forward`
    ids, mask = padded_batch(2, 8, [8, 3], "left")
    before = eet_calls["add_layer_norm"]
    assert_close(_logits(model, ids, mask), _logits(hf, ids, mask), FP32_ATOL, where=mask.bool()[..., None])
    assert eet_calls["add_layer_norm"] > before
    eet_hf.restore(model)
    # accelerate leaves each module's own forward bound on the instance; eet's must be gone from all of them.
    assert all(m.forward.__func__ is type(m).forward for m in model.modules())
    before = eet_calls["add_layer_norm"]
    _logits(model, ids, mask)
    assert eet_calls["add_layer_norm"] == before


@pytest.mark.parametrize("order", ["place_then_accelerate", "accelerate_then_place"])
def test_generic_family_under_cpu_offload(order, monkeypatch):
    """The generic path (Llama) with every weight offloaded: eet's norms run, generate takes HF's loop."""
    calls = {"rms_norm": 0}
    rms_norm = ops.rms_norm

    def counted(*args, **kwargs):
        calls["rms_norm"] += 1
        return rms_norm(*args, **kwargs)

    monkeypatch.setattr(ops, "rms_norm", counted)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=100, max_position_embeddings=128, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    hf = LlamaForCausalLM(config).eval()
    model = copy.deepcopy(hf)
    if order == "place_then_accelerate":
        model = eet_hf.accelerate(cpu_offload(model, execution_device="cpu"))
    else:
        model = cpu_offload(eet_hf.accelerate(model), execution_device="cpu")
    ids, mask = padded_batch(3, 10, [10, 6, 2], "left")
    got = _logits(model, ids, mask)
    assert calls["rms_norm"] == 5, "eet's rms_norm did not run for every norm (2 per layer + the final one)"
    assert_close(got, _logits(hf, ids, mask), FP32_ATOL, where=mask.bool()[..., None])
    assert torch.equal(model.generate(ids, attention_mask=mask, **GREEDY), hf.generate(ids, attention_mask=mask,
                                                                                          **GREEDY))


def test_seq_bounds_follow_the_hooks_to_the_block_device():
    """A block on another GPU gets eet's mask bounds there: accelerate moves inputs with `.to`."""
    bounds = from_padding_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]).bool(), 2, 3, 3, 0, 0, True,
                               torch.device("cpu"), padded=True)
    moved = send_to_device({"attention_mask": bounds}, torch.device("meta"))["attention_mask"]
    assert type(moved) is type(bounds)
    assert {moved.kv_start.device.type, moved.kv_end.device.type, moved.q_offset.device.type} == {"meta"}
    assert (moved.causal, moved.q_len, moved.kv_len, moved.padded) == (True, 3, 3, True)
    assert bounds.to("cpu") is bounds
