"""CPU tests of the benchmark harness (`python -m evaluation.bench --quick`): every suite runs on tiny configs
and writes well-formed rows; the pieces that decide what is measured (padding patterns, roofline numbers,
the largest-model search, merging, budgets, error rows) are checked directly. About 30 s in all."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from transformers import GPT2LMHeadModel

from evaluation import results_io
from evaluation.bench import cli, encoder, generate, largest, memory, output, replot, sentence_embed
from evaluation.bench import roofline as R
from evaluation.bench import shapes as S

SUITES = list(cli.SUITES)


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["--quick", "--out-dir", str(out)]) == 0
    return out


def _load(out, suite):
    data = json.loads((out / f"{suite}-{results_io.device_slug()}.json").read_text())
    return data, {(r["case"], r["engine"], r["metric"]): r["value"] for r in data["rows"]}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("suite", SUITES)
def test_quick_suite_writes_clean_results(quick_dir, suite):
    if suite == "sentence-embed":  # without it the suite writes error rows saying so (.ci/run installs it)
        pytest.importorskip("sentence_transformers")
    data, _ = _load(quick_dir, suite)
    assert set(data["meta"]) == {"gpu", "driver", "torch", "transformers", "date", "command"}
    assert data["meta"]["command"].startswith("python -m evaluation.bench --quick")
    assert data["rows"], f"{suite} wrote no rows"
    for r in data["rows"]:
        assert set(results_io.ROW_KEYS) <= set(r) and r["engine"] in results_io.ENGINES
    errors = [r for r in data["rows"] if r["metric"] == "error"]
    assert not errors, f"{suite} recorded errors on CPU: {errors}"
    md = (quick_dir / f"{suite}-{results_io.device_slug()}.md").read_text()
    assert "| case | engine | metric | value | unit |" in md and "## By engine" in md and "## Notes" in md
    if importlib.util.find_spec("matplotlib") is not None:  # CI installs it; without it the PNG is skipped
        png = quick_dir / f"{suite}-{results_io.device_slug()}.png"
        assert png.is_file() and replot.replot(png.with_suffix(".json")) == png


def test_quick_generate_rows(quick_dir):
    _, got = _load(quick_dir, "generate")
    models, prompt, new = generate.plan(quick=True)
    for shape, batches, engines in models:
        for engine in engines:
            for batch in batches:
                case = f"{shape.name}/bs{batch}/prompt{prompt}/new{new}"
                for metric in ("prefill_ms", "generate_ms", "warmup_s", "prefill_roofline_share"):
                    assert _positive(got.get((case, engine, metric))), (case, engine, metric)
                # On a busy CPU t(new) - t(new=1) can come out negative: check the method, not the sign.
                decode = got[(case, engine, "decode_ms_per_token")]
                full, prefill = got[(case, engine, "generate_ms")], got[(case, engine, "prefill_ms")]
                assert decode == pytest.approx((full - prefill) / (new - 1))
                share = got[(case, engine, "decode_roofline_share")]
                assert _positive(share) if decode > 0 else share == "nan"  # JSON has no NaN: written as a string


def test_quick_encoder_and_decoder_layer_rows(quick_dir):
    _, got = _load(quick_dir, "encoder")
    for engine in ("hf-eager", "hf-sdpa", "torch-compile", "torch-compile-ro", "eet"):
        for pad in encoder.PADS:
            assert _positive(got.get((f"bert-tiny/bs2/seq16/{pad}", engine, "ms"))), (engine, pad)
            assert _positive(got.get((f"bert-tiny/bs2/seq16/{pad}", engine, "roofline_share"))), (engine, pad)
    _, got = _load(quick_dir, "decoder-layer")
    for case in ("hidden32/bs2/prompt8/total16", "hidden48/bs2/prompt8/total16", "hidden32/bs2/prompt4/total8"):
        for engine in ("hf-eager", "hf-sdpa", "eet"):
            assert _positive(got.get((case, engine, "ms"))), (case, engine)
    md = (quick_dir / f"decoder-layer-{results_io.device_slug()}.md").read_text()
    assert "FasterTransformer" in md and "eet on hidden32/bs2/prompt8/total16: kernels=reference" in md


def test_quick_memory_finds_largest_fitting_tiny_shape(quick_dir):
    _, got = _load(quick_dir, "memory")
    # The pretend 8 MiB device refuses tiny-256 and tiny-512 by estimate; tiny-128 is the largest that fits.
    tiny = {c.name: c for c in largest.TINY}
    assert tiny["tiny-256"].estimate_bytes(4, 1, 12, 8, 0) > largest.QUICK_FREE_BYTES
    for engine in ("hf-sdpa", "eet"):
        assert got[("largest-gpt", engine, "params_billion")] == pytest.approx(tiny["tiny-128"].params() / 1e9)


def test_quick_cold_start_runs_a_fresh_process(quick_dir):
    _, got = _load(quick_dir, "cold-start")
    assert _positive(got[("gpt2-tiny/empty-build-cache", "eet", "s")])
    assert _positive(got[("gpt2-tiny/empty-build-cache", "eet", "import_s")])


def test_quick_sentence_embed_rows(quick_dir):
    pytest.importorskip("sentence_transformers")
    _, got = _load(quick_dir, "sentence-embed")
    case = "st-bert-tiny/n64/bs16"
    for engine in ("hf-sdpa", "eet", "torch-compile-ro"):
        for metric in ("sentences_per_s", "encode_s", "warmup_s"):
            assert _positive(got.get((case, engine, metric))), (engine, metric)
        assert got[(case, engine, "sentences_per_s")] == pytest.approx(64 / got[(case, engine, "encode_s")])
    # fp32 on CPU: eet's reference ops and dynamo's eager backend differ from HF only by summation order (~1e-6).
    for engine in ("eet", "torch-compile-ro"):
        for metric in ("min_cosine", "min_centered_cosine"):
            assert got[(case, engine, metric)] == pytest.approx(1.0, abs=1e-4), (engine, metric)
    assert (case, "hf-sdpa", "min_cosine") not in got  # the reference itself has no agreement row


def test_sentence_embed_spent_budget_skips_every_engine(tmp_path):
    args = ["--quick", "--suite", "sentence-embed", "--budget-s", "0", "--out-dir", str(tmp_path)]
    assert cli.main(args) == 0
    data, _ = _load(tmp_path, "sentence-embed")
    assert [r["engine"] for r in data["rows"]] == ["hf-sdpa", "eet", "torch-compile-ro"]
    assert all(r["metric"] == "error" for r in data["rows"])
    assert all("skipped: suite budget" in r["error"] or "not installed" in r["error"] for r in data["rows"])


def test_sentence_embed_centered_cosine_catches_a_wrong_engine():
    # Random-weight embeddings share a dominant component: another sentence's embedding still has cosine ~0.95,
    # and only the centered cosine shows the mix-up.
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(64, generator=generator) + 0.2 * torch.randn(32, 64, generator=generator)
    rows = sentence_embed.agreement_rows("c", "eet", reference.roll(1, dims=0), reference)
    values = {r["metric"]: r["value"] for r in rows}
    assert values["min_cosine"] > 0.8 and values["min_centered_cosine"] < 0.5
    assert sentence_embed.agreement_rows("c", "hf-sdpa", reference, reference) == []


def test_mixed_length_sentences_spread_over_the_range():
    from transformers import AutoTokenizer

    from eet_hf.models import default_model_path
    from evaluation.bench.sentences import mixed_length_sentences, token_lengths

    tokenizer = AutoTokenizer.from_pretrained(default_model_path("bert"))
    sentences = mixed_length_sentences(tokenizer, 400, 8, 256)
    assert sentences == mixed_length_sentences(tokenizer, 400, 8, 256)  # fixed seed
    lengths = token_lengths(tokenizer, sentences)
    assert lengths.min() >= 8 and lengths.max() <= 256
    # Uniform targets: each quarter of the range holds about a quarter of the sentences (100 +- 30 of 400).
    quarters = torch.histc(torch.tensor(lengths, dtype=torch.float), bins=4, min=8, max=256)
    assert all(70 <= q <= 130 for q in quarters.tolist()), quarters


def test_candidate_params_match_the_built_model():
    cand = largest.Candidate("t", 3, 64, 4, vocab=300, positions=40)
    model = S.build_empty(GPT2LMHeadModel, cand.config(), "cpu", torch.float32)
    assert S.param_count(model) == cand.params()
    assert model.lm_head.weight is model.transformer.wte.weight  # tying survives to_empty
    assert all(torch.isfinite(p).all() for p in model.parameters())
    n = R.numbers(model)
    assert n.matmul_params == cand.params() - (300 + 40) * 64 and n.head_params == 300 * 64
    assert n.weight_bytes == cand.params() * 4 and (n.layers, n.hidden, n.kv_dim) == (3, 64, 64)
    # 128 real tokens of a 2-sequence batch: GEMMs 2*P*tokens, attention 4*L*d*sum(len^2).
    assert R.encoder_flops(n, [100, 28]) == 2 * n.matmul_params * 128 + 4 * 3 * 64 * (100**2 + 28**2)
    assert R.decode_floor_ms(n, 2, 10) == pytest.approx((n.weight_bytes + 2 * 3 * 2 * 10 * 64 * 4) / 4.16e9)


def test_padding_patterns():
    assert encoder.lengths_for("nopad", 4, 8) == [8, 8, 8, 8]
    assert encoder.lengths_for("halfpad", 4, 8) == [8, 8, 4, 4]
    assert encoder.lengths_for("halfpad", 1, 128) == [64]  # BASELINES.md's mask[bs // 2:, seq // 2:] = 0
    rand = encoder.lengths_for("randpad", 32, 512)
    assert rand == encoder.lengths_for("randpad", 32, 512) and all(1 <= t <= 512 for t in rand)
    assert len(set(rand)) > 1
    inputs = encoder.encoder_inputs(100, [3, 1], 4, "cpu")
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert (inputs["input_ids"][inputs["attention_mask"] == 0] == 0).all()
    assert (inputs["input_ids"][inputs["attention_mask"] == 1] > 0).all()


def test_peak_ratios_and_merge_and_pivot():
    peaks = [results_io.make_row("m/bs1", e, "peak_gib", v, "GiB") for e, v in
             (("hf-sdpa", 4.0), ("eet", 3.0), ("hf-eager", 5.0))]
    peaks.append(results_io.make_row("m/bs8", "eet", "peak_gib", 2.0, "GiB"))  # no HF peak: no ratio
    ratios = {(r["case"], r["engine"]): r["value"] for r in memory.ratio_rows(peaks)}
    assert ratios == {("m/bs1", "eet"): 0.75, ("m/bs1", "hf-eager"): 1.25}
    old = [results_io.make_row("a", "eet", "ms", 1.0), output.error_row("b", "eet", "boom")]
    new = [results_io.make_row("b", "eet", "ms", 2.0)]
    assert output.merge_rows(old, new) == [old[0], new[0]]
    table = output.pivot([*old, results_io.make_row("a", "hf-sdpa", "ms", 3.0)], "ms")
    assert "| a | 1 | 3 |" in table and "| case | eet | hf-sdpa |" in table
    assert output.error_row("c", "eet", ValueError("x|y\nz"))["error"] == "ValueError: x/y z"


def test_spent_budget_records_skips_and_engine_failure_is_a_row(tmp_path, monkeypatch):
    args = ["--quick", "--suite", "generate", "--models", "gpt2-tiny", "--out-dir", str(tmp_path)]
    assert cli.main([*args, "--budget-s", "0"]) == 0
    data, _ = _load(tmp_path, "generate")
    assert len(data["rows"]) == 4 and all("skipped: suite budget" in r["error"] for r in data["rows"])

    real = generate.E.prepare

    def failing(model, engine, device):
        if engine == "hf-eager":
            raise RuntimeError("simulated compile failure")
        return real(model, engine, device)

    monkeypatch.setattr(generate.E, "prepare", failing)
    assert cli.main([*args, "--engines", "hf-eager,hf-sdpa", "--merge"]) == 0
    data, got = _load(tmp_path, "generate")
    case = "gpt2-tiny/bs2/prompt8/new4"
    errors = {r["engine"]: r["error"] for r in data["rows"] if r["metric"] == "error"}
    assert errors["hf-eager"] == "RuntimeError: simulated compile failure"
    assert _positive(got[(case, "hf-sdpa", "decode_ms_per_token")])
    # --merge kept the earlier skip rows of the engines this run did not measure.
    assert "skipped" in errors["eet"] and "skipped" in errors["hf-static-compile"]
    assert " ; " in data["meta"]["command"]


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        cli.parse_args(["--quick", "--models", "gpt5"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--quick", "--engines", "tensorrt"])
    args = cli.parse_args(["--quick", "--suite", "encoder", "--models", "bert-tiny", "--engines", "eet,hf-sdpa"])
    assert args.models == {"bert-tiny"} and args.engines == {"eet", "hf-sdpa"}
    with pytest.raises(SystemExit):  # the full-size names are not quick ones
        cli.parse_args(["--quick", "--suite", "sentence-embed", "--models", "st-bert-base"])
    args = cli.parse_args(["--quick", "--suite", "sentence-embed", "--models", "st-bert-tiny"])
    assert args.models == {"st-bert-tiny"}


def test_hf_sdpa_without_cudnn_switches_only_hf_sdpa_and_restores():
    from evaluation.bench.context import Budget, RunContext

    ctx = RunContext(quick=True, device="cpu", dtype=torch.float32, repeats=1, budget=Budget(1.0),
                     hf_sdpa_without_cudnn=True)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with ctx.engine_backends("hf-sdpa"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    with ctx.engine_backends("eet"):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    args = cli.parse_args(["--quick", "--suite", "decoder-layer", "--hf-sdpa-without-cudnn"])
    assert args.hf_sdpa_without_cudnn
