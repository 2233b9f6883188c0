"""CPU tests of the evaluation suites, the embedded models and the eet-hf CLI (about a minute in all)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from eet_hf import cli
from eet_hf.models import default_model_path, heldout_text_path
from evaluation import parity, perplexity, results_io
from evaluation import texts as T
from evaluation.parity_checks import greedy_generation, padded_logits
from evaluation.ppl_scoring import causal_score, fixed_mask, masked_score


def _rows(path):
    data = json.loads(path.read_text())
    return data, {(r["case"], r["engine"], r["metric"]): r for r in data["rows"]}


# --- results writer -------------------------------------------------------------------------------------------


def test_results_writer_shape(tmp_path):
    rows = [
        results_io.make_row("m/fp32/x", "eet", "max_abs_dlogit", 1.5e-6, "logit", **{"pass": True}),
        results_io.make_row("m/fp32/x", "hf-eager", "greedy_match_share", 1.0, "share"),
    ]
    path = results_io.write_results("unit", rows, "python -m unit", out_dir=tmp_path)
    assert path == tmp_path / f"unit-{results_io.device_slug()}.json"
    data = json.loads(path.read_text())
    assert set(data) == {"meta", "rows"}
    assert set(data["meta"]) == {"gpu", "driver", "torch", "transformers", "date", "command"}
    assert data["meta"]["command"] == "python -m unit" and data["meta"]["torch"] == torch.__version__
    assert [{k: r[k] for k in results_io.ROW_KEYS} for r in data["rows"]] == [
        {"case": "m/fp32/x", "engine": "eet", "metric": "max_abs_dlogit", "value": 1.5e-6, "unit": "logit"},
        {"case": "m/fp32/x", "engine": "hf-eager", "metric": "greedy_match_share", "value": 1.0, "unit": "share"},
    ]
    md = path.with_suffix(".md").read_text()
    assert "| case | engine | metric | value | unit |" in md and "max_abs_dlogit" in md
    with pytest.raises(ValueError):
        results_io.make_row("c", "tensorrt", "m", 1.0)
    with pytest.raises(ValueError):
        results_io.write_results("unit", [{"case": "c", "engine": "eet"}], "cmd", out_dir=tmp_path)


def test_device_slug(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert results_io.device_slug() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    assert results_io.device_slug() == "h200"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert results_io.device_slug() == "nvidia-a100-sxm4-80gb"


# --- embedded models --------------------------------------------------------------------------------------------


def test_embedded_models_load_and_are_small():
    total = 0
    for family in ("gpt2", "bert", "llama"):
        path = default_model_path(family)
        total += sum(f.stat().st_size for f in path.iterdir())
        assert json.loads((path / "config.json").read_text())["dtype"] == "float16"
    assert total < 30e6
    assert 10e3 < heldout_text_path().stat().st_size < 200e3
    with pytest.raises(ValueError):
        default_model_path("t5")

    gpt2 = AutoModelForCausalLM.from_pretrained(default_model_path("gpt2"), dtype=torch.float32)
    assert gpt2.dtype == torch.float32 and 1e6 < gpt2.num_parameters() < 10e6
    tok = AutoTokenizer.from_pretrained(default_model_path("gpt2"))
    enc = tok(["a b", "a b c d"], padding=True)
    assert "token_type_ids" not in enc and enc["attention_mask"][0][0] == 0  # left padding, no type ids
    bert_tok = AutoTokenizer.from_pretrained(default_model_path("bert"))
    ids = bert_tok("Return the value.")["input_ids"]
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    masked = bert_tok("Return the [MASK] value.")["input_ids"]
    assert bert_tok.mask_token_id in masked and len(masked) == len(ids) + 1  # [MASK] absorbed its leading space


def test_gpt2_tiny_writes_text():
    """The embedded GPT-2 continues a prompt with real words, not noise (seeded top-k sampling, fp32: the tiny
    model's greedy continuation of a short prompt falls into repeated newlines, a known small-LM habit)."""
    path = default_model_path("gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    enc = tok("Return the", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=16, do_sample=True, top_k=20, pad_token_id=tok.pad_token_id)
    words = tok.decode(out[0, enc["input_ids"].shape[1] :]).split()
    assert len(words) >= 4 and sum(w.strip(".,()'`").isalpha() for w in words) >= len(words) // 2, words


# --- parity -------------------------------------------------------------------------------------------------------


def test_parity_detects_a_perturbed_model():
    """The measurements can fail: a copy with noise on one weight matrix must show up in logits and generation.
    (Random noise, not a constant: a constant added to every c_proj weight shifts all hidden dims equally, and the
    next LayerNorm removes it.)"""
    path = default_model_path("gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    bad = copy.deepcopy(ref)
    with torch.no_grad():
        weight = bad.transformer.h[1].mlp.c_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    models = {"hf-sdpa": ref, "hf-eager": ref, "eet": bad}
    res = padded_logits(models, tok, "gpt2", T.varied_texts(4), 64, "cpu")
    assert res["hf-eager"]["max_abs_dlogit"] == 0 and res["eet"]["max_abs_dlogit"] > 1e-3
    g = greedy_generation(models, tok, T.prompts(4), 16, "cpu")
    assert g["hf-eager"] == {"greedy_match_share": 1.0, "first_divergence": 16}
    assert g["eet"]["greedy_match_share"] < 1.0 and g["eet"]["first_divergence"] < 16


def test_parity_quick_passes(tmp_path):
    assert parity.main(["--quick", "--dtypes", "fp32", "--out-dir", str(tmp_path)]) == 0
    data, rows = _rows(tmp_path / f"parity-{results_io.device_slug()}.json")
    assert data["meta"]["command"].startswith("python -m evaluation.parity")
    for model, pad in (("gpt2-tiny", "leftpad"), ("bert-tiny", "rightpad"), ("llama-tiny", "leftpad")):
        assert rows[(f"{model}/fp32/explain", "eet", "accelerated_modules")]["value"] > 0
        assert rows[(f"{model}/fp32/{pad}", "eet", "max_abs_dlogit")]["value"] <= 1e-4
        assert rows[(f"{model}/fp32/{pad}", "eet", "all_finite")]["value"] == 1
    assert rows[("gpt2-tiny/fp32/greedy-8x32", "eet", "greedy_match_share")]["value"] == 1.0
    assert rows[("llama-tiny/fp32/greedy-8x32", "eet", "greedy_match_share")]["value"] == 1.0
    assert rows[("bert-tiny/fp32/pipeline-text-classification", "eet", "pipeline_equal")]["value"] == 1.0
    assert not [r for r in data["rows"] if r.get("pass") is False]


# --- perplexity -----------------------------------------------------------------------------------------------


def test_sliding_windows_score_every_token_once():
    path = default_model_path("gpt2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(AutoTokenizer.from_pretrained(path)(T.varied_texts(3)[2])["input_ids"][:200])
    windowed = causal_score(model, ids, max_length=64, stride=32, device="cpu")
    whole = causal_score(model, ids, max_length=512, stride=256, device="cpu")
    assert windowed.count == whole.count == len(ids) - 1
    # Less context changes the score, but stays in the same ballpark (either direction: a tiny model may even
    # do better on short windows).
    assert windowed.perplexity != whole.perplexity and whole.perplexity > 1
    assert 0.5 * whole.perplexity < windowed.perplexity < 2 * whole.perplexity

    bpath = default_model_path("bert")
    btok = AutoTokenizer.from_pretrained(bpath)
    bert = AutoModelForMaskedLM.from_pretrained(bpath, dtype=torch.float32).eval()
    bids = torch.tensor(btok(T.varied_texts(3)[2], add_special_tokens=False)["input_ids"][:200])
    picked = fixed_mask(len(bids), 0.15, seed=0)
    score = masked_score(bert, bids, picked, btok, max_length=66, stride=32, device="cpu")
    assert score.count == int(picked.sum()) > 10 and 0 <= score.correct <= score.count


def test_perplexity_short_run_agrees(tmp_path):
    assert perplexity.main(["--max-tokens", "400", "--out-dir", str(tmp_path)]) == 0
    _, rows = _rows(tmp_path / f"perplexity-{results_io.device_slug()}.json")
    case = "gpt2-tiny/fp32/heldout"
    hf, eet = rows[(case, "hf-sdpa", "perplexity")]["value"], rows[(case, "eet", "perplexity")]["value"]
    assert 1 < hf < 4096 and abs(eet / hf - 1) <= 1e-5
    assert rows[(case, "reference", "scored_tokens")]["value"] == 399
    lcase = "llama-tiny/fp32/heldout"
    assert rows[(lcase, "eet", "rel_delta_perplexity")]["pass"] is True
    assert 1 < rows[(lcase, "hf-sdpa", "perplexity")]["value"] < 4096
    bcase = "bert-tiny/fp32/heldout"
    assert rows[(bcase, "eet", "rel_delta_masked_perplexity")]["pass"] is True
    assert rows[(bcase, "eet", "masked_accuracy")]["value"] == rows[(bcase, "hf-sdpa", "masked_accuracy")]["value"]


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch         {torch.__version__}" in out and "build cache" in out and "cached_build" in out


def test_cli_demo(capsys):
    assert cli.main(["demo", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[HF]" in out and "[eet]" in out and "match: yes" in out
    assert not re.search(r"\b0 modules accelerated", out), out
