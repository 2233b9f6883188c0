"""EetCache (preallocated, growable HF Cache) and KVArena: the memory manager's CPU-testable logic."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2LMHeadModel

import eet_hf
from eet_hf.engine import EetCache, KVArena
from eet_hf.engine.kv_cache import CAPACITY_STEP, round_capacity

from .helpers import assert_close, gpt2_config, padded_batch, pair


def _manual_loop(model, ids, mask, cache, steps=6):
    """A user's own greedy loop over past_key_values (positional: 5.17 and 5.24 name the argument differently)."""
    out = model(ids, cache, attention_mask=mask, use_cache=True)
    tokens = []
    for _ in range(steps):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(token, cache, attention_mask=mask, use_cache=True)
    return torch.cat(tokens, 1), out.logits


def test_manual_loop_with_eet_cache_matches_dynamic_cache():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model)
    ids, mask = padded_batch(3, 9, [9, 5, 2], "left")
    with torch.no_grad():
        cache = EetCache(reserve=12)  # smaller than needed: it must grow mid-loop
        tokens, logits = _manual_loop(model, ids, mask, cache, steps=8)
        ref_tokens, ref_logits = _manual_loop(ref, ids, mask, DynamicCache(), steps=8)
    assert torch.equal(tokens, ref_tokens)
    assert_close(logits, ref_logits, 1e-4)
    assert cache.get_seq_length() == 9 + 8
    assert cache.layers[0].capacity >= 17 and cache.layers[0].capacity % CAPACITY_STEP == 0


def test_hf_generate_accepts_eet_cache():
    model, ref = pair(GPT2LMHeadModel, gpt2_config())
    eet_hf.accelerate(model, generate=False)  # HF's own loop, with eet's cache
    ids, mask = padded_batch(2, 6, [6, 4], "left")
    cache = EetCache(reserve=6 + 5)
    out = model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=5, do_sample=False)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, expected)
    assert cache.get_seq_length() == 6 + 5 - 1


def test_layer_appends_in_place_until_full():
    cache = EetCache(reserve=100)
    k = torch.randn(2, 4, 3, 8)
    keys, _ = cache.update(k, k + 1, 0)
    buffer = cache.layers[0]._k_buf
    for _ in range(10):
        keys, values = cache.update(torch.randn(2, 4, 1, 8), torch.randn(2, 4, 1, 8), 0)
    assert cache.layers[0]._k_buf is buffer, "appends within capacity must not reallocate"
    assert keys.shape[-2] == 13 and torch.equal(keys[..., :3, :], k)
    assert cache.nbytes == 2 * 2 * 4 * round_capacity(100) * 8 * 4


def test_crop_select_and_reorder():
    cache = EetCache()
    k = torch.arange(2 * 1 * 5 * 2, dtype=torch.float32).view(2, 1, 5, 2)
    cache.update(k, -k, 0)
    cache.crop(-2)
    assert cache.get_seq_length() == 3 and torch.equal(cache.layers[0].keys, k[..., :3, :])
    cache.layers[0].reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.layers[0].keys, k[[1, 0], :, :3])
    cache.layers[0].batch_select_indices(torch.tensor([1]))
    assert torch.equal(cache.layers[0].values, -k[[0], :, :3])
    keys, _ = cache.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), 0)
    assert keys.shape == (1, 1, 4, 2)


def test_arena_reuses_and_grows():
    arena = KVArena()
    a = arena.view(2, 1, 4, 64, 8, torch.float32, torch.device("cpu"))
    generation = arena.generation
    b = arena.view(2, 1, 4, 32, 8, torch.float32, torch.device("cpu"))  # smaller: same storage, no realloc
    assert arena.generation == generation and b.data_ptr() == a.data_ptr()
    arena.view(2, 4, 4, 64, 8, torch.float32, torch.device("cpu"))  # larger: reallocated, graphs stale
    assert arena.generation == generation + 1 and arena.nbytes == 2 * 2 * 4 * 4 * 64 * 8 * 4
    arena.release()
    assert arena.nbytes == 0


def test_engine_refuses_a_request_that_does_not_fit_before_running_anything(monkeypatch):
    """DecodeEngine._check_fits on a (faked) CUDA device: free memory plus what the allocator holds unused plus the
    arena against the KV cache and prompt activations a request needs."""
    from types import SimpleNamespace

    from eet_hf.engine.decode_loop import DecodeEngine

    gib = 2**30
    stats = {"reserved_bytes": {"all": {"current": 3 * gib}}, "allocated_bytes": {"all": {"current": 2 * gib}}}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda device: stats)
    w = SimpleNamespace(num_layers=16, kv_heads=8, head_dim=64, dtype=torch.float16, width=2048, vocab=32000)
    engine, cuda = DecodeEngine(), torch.device("cuda", 0)
    engine._check_fits(w, batch=8, prompt_len=128, capacity=256, device=cuda)  # ~0.1 GiB of 2 GiB usable
    with pytest.raises(torch.OutOfMemoryError, match="needs .* GiB .* but only 2.00 GiB is free"):
        engine._check_fits(w, batch=512, prompt_len=128, capacity=2048, device=cuda)  # 32 GiB of KV cache


def test_fit_check_runs_once_per_request_shape_and_arena(monkeypatch):
    """A request shape that already ran over the same arena is not checked again (its memory is held); a new shape
    or a reallocated arena is."""
    from transformers import GPT2LMHeadModel

    import eet_hf
    from eet_hf.engine.generate import ENGINE_ATTR

    from .helpers import gpt2_config, padded_batch

    model = eet_hf.accelerate(GPT2LMHeadModel(gpt2_config()).eval())
    engine = model.__dict__[ENGINE_ATTR].engine
    checked = []
    monkeypatch.setattr(engine, "_check_fits", lambda w, batch, prompt_len, capacity, device:
                        checked.append((batch, prompt_len, capacity)))

    def call(batch, prompt, new):
        ids, mask = padded_batch(batch, prompt, [prompt] * batch, "left")
        model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)

    call(2, 6, 4)
    call(2, 6, 4)
    assert len(checked) == 1
    call(3, 6, 4)  # another batch
    call(2, 7, 4)  # another prompt length
    assert len(checked) == 3
    engine.arena.release()  # the arena's next view reallocates: every shape is checked again
    call(2, 6, 4)
    assert len(checked) == 4
