"""The embedded llama-tiny (a trained Llama 3-style decoder, eet_hf/models/llama-tiny) on CPU: what it is, and
that eet's fused decoder step generates HF's greedy tokens from it on left-padded held-out prompts."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import eet_hf
from eet_hf.models import default_model_path, heldout_text_path


@pytest.fixture(scope="module")
def llama():
    path = default_model_path("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _heldout_prompts(n: int) -> list[str]:
    """The first 3..11 words of held-out lines (never trained on), so the batch is left-padded."""
    lines = [ln.strip() for ln in heldout_text_path().read_text().splitlines() if len(ln.split()) >= 4]
    return [" ".join(ln.split()[: 3 + i % 9]) for i, ln in enumerate(lines[:n])]


def test_llama_tiny_is_a_small_gqa_llama(llama):
    model, tok = llama
    path = default_model_path("llama")
    assert json.loads((path / "config.json").read_text())["dtype"] == "float16"
    assert sum(f.stat().st_size for f in path.iterdir()) < 10e6
    config = model.config
    assert isinstance(model, LlamaForCausalLM) and config.tie_word_embeddings
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 64)
    assert config.intermediate_size % 16 == 0 and config.max_position_embeddings == 512
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    enc = tok(["Return the", "Return the value of the"], padding=True)
    assert all(row[mask.index(1)] == tok.bos_token_id for row, mask in zip(enc["input_ids"], enc["attention_mask"]))
    assert enc["attention_mask"][0][0] == 0 and tok.pad_token_id == tok.eos_token_id  # left padding with EOS


def test_llama_tiny_writes_text(llama):
    """Trained, not random: greedy continuations of held-out prompts are mostly words, and no row repeats one
    token (the untrained model continues every prompt with " the the the ...")."""
    model, tok = llama
    enc = tok(_heldout_prompts(8), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    words = []
    for row in out[:, enc["input_ids"].shape[1] :]:
        text_ids = [t for t in row.tolist() if t not in tok.all_special_ids]
        assert len(set(text_ids)) >= 2, tok.decode(row)
        words += tok.decode(text_ids).split()
    assert sum(w.strip(".,:()'`").isalpha() for w in words) >= 0.6 * len(words), words


def test_eet_gives_hf_greedy_tokens_through_the_fused_step(llama):
    hf, tok = llama
    model = eet_hf.accelerate(copy.deepcopy(hf))
    report = eet_hf.explain(model)
    assert any(line.startswith("decoder step") for line in report.accelerated), report
    enc = tok(_heldout_prompts(8), return_tensors="pt", padding=True)
    assert not bool(enc["attention_mask"].all())  # the batch is left-padded
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        got, want = model.generate(**enc, **kwargs), hf.generate(**enc, **kwargs)
    assert torch.equal(got, want), (tok.batch_decode(got), tok.batch_decode(want))
