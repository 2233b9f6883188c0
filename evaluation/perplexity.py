"""Perplexity suite: the accelerated and the unpatched model score the same text; their perplexities must agree.

    python -m evaluation.perplexity                                   # embedded models on eet_hf/models/heldout.txt
    python -m evaluation.perplexity --max-tokens 2000                 # bounded (CI)
    python -m evaluation.perplexity --full --max-tokens 8192          # + GPT-2 small/XL, BERT base/large shapes
    python -m evaluation.perplexity --dataset wikitext --config wikitext-2-raw-v1 --split test   # hub reachable

Decoders (GPT-2, Llama): causal perplexity. BERT: masked-token perplexity and accuracy over a fixed seeded 15% masking (all
[MASK]). Sliding windows: max_length = the model's positions, stride = max_length / 2. Pass rule on the
relative difference |ppl_eet / ppl_hf - 1|: <= 0.001% in fp32, <= 0.1% in fp16/bf16. The --full shapes have
random weights, so their perplexity itself means nothing (about the vocabulary size); the difference between
the two engines scoring the same tokens still does.
Writes evaluation/results/perplexity-<device>.{json,md,png}; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from eet_hf.models import heldout_text_path

from .models import DTYPES, ModelSpec, full_specs, load_model, load_tokenizer, spec_from_path, tiny_specs
from .plots import bar_chart
from .ppl_scoring import causal_score, fixed_mask, masked_score
from .results_io import make_row, write_results

REL_LIMIT = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-3}  # 0.001% and 0.1%
MASK_RATE, MASK_SEED = 0.15, 0


def read_lines_like_datasets(path: Path) -> list[str]:
    """The rows datasets' "text" loader makes of a file by default: lines without their "\\n" (universal newlines)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def load_text(dataset: str | None, config: str | None, split: str) -> tuple[str, str, str]:
    """(text, tag, loader). Default: the embedded held-out file through datasets' "text" loader (offline).

    Without `datasets` installed (the GPU image lacks it unless tests/gpu/install_wheels.sh ran), the embedded
    file is read with the same line splitting instead, and `loader` says so: the text is identical, and the
    results rows record which way it came in.
    """
    try:
        from datasets import load_dataset
    except ImportError as exc:
        if dataset is not None:
            raise SystemExit(f"--dataset {dataset} needs the datasets package: {exc}") from exc
        print(f"note: datasets is not importable ({exc}); reading {heldout_text_path().name} directly")
        return "\n".join(read_lines_like_datasets(heldout_text_path())), "heldout", "file (datasets missing)"

    if dataset is None:
        ds = load_dataset("text", data_files=str(heldout_text_path()), split="train")
        return "\n".join(ds["text"]), "heldout", "datasets"  # the loader splits lines; "\n" restores the file
    ds = load_dataset(dataset, config, split=split)
    return "\n\n".join(ds["text"]), f"{dataset}-{split}", "datasets"  # the HF guide's join for wikitext


def evaluate(
    spec: ModelSpec, dtype: str, device: str, text: str, tag: str, max_tokens: int | None, loader: str = "datasets"
) -> list[dict]:
    """Rows for one model in one dtype: both engines' (masked) perplexity and their relative difference."""
    import eet_hf

    tokenizer = load_tokenizer(spec)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if max_tokens:
        ids = ids[:max_tokens]
    hf = load_model(spec, "lm", DTYPES[dtype], device)
    models = {"hf-sdpa": hf, "eet": eet_hf.accelerate(copy.deepcopy(hf))}
    max_length = hf.config.max_position_embeddings  # GPT2Config maps it to n_positions
    stride = max_length // 2
    if spec.family == "gpt2":
        scores = {e: causal_score(m, ids, max_length, stride, device) for e, m in models.items()}
        metric = "perplexity"
    else:
        picked = fixed_mask(len(ids), MASK_RATE, MASK_SEED)
        scores = {e: masked_score(m, ids, picked, tokenizer, max_length, stride, device) for e, m in models.items()}
        metric = "masked_perplexity"
    case = f"{spec.name}/{dtype}/{tag}"
    rows = [
        make_row(
            case, "reference", "scored_tokens", scores["hf-sdpa"].count, "tokens", **{"pass": None, "loader": loader}
        )
    ]
    for engine, score in scores.items():
        rows.append(make_row(case, engine, metric, score.perplexity, "ppl", **{"pass": None}))
        if spec.family == "bert":
            rows.append(make_row(case, engine, "masked_accuracy", score.accuracy, "share", **{"pass": None}))
    rel = scores["eet"].perplexity / scores["hf-sdpa"].perplexity - 1
    rows.append(make_row(case, "eet", f"rel_delta_{metric}", 100 * rel, "%", **{"pass": abs(rel) <= REL_LIMIT[dtype]}))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a datasets name (needs the hub); default: the embedded held-out text")
    parser.add_argument("--config", help="dataset config, e.g. wikitext-2-raw-v1")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, action="append", help="local HF dir (gpt2/llama/bert); default: embedded")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", help="comma list of fp32,fp16,bf16 (default: all on CUDA, fp32 on CPU)")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    parser.add_argument("--full", action="store_true", help="also GPT-2 small/XL and BERT base/large shapes")
    parser.add_argument("--out-dir", type=Path, default=None, help="default evaluation/results/")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dtypes = args.dtypes.split(",") if args.dtypes else (["fp32", "fp16", "bf16"] if args.device != "cpu" else ["fp32"])
    specs = [spec_from_path(p) for p in args.model] if args.model else tiny_specs()
    if args.full:
        specs += full_specs()
    text, tag, loader = load_text(args.dataset, args.config, args.split)

    rows: list[dict] = []
    for spec in specs:
        for dtype in dtypes:
            print(f"== {spec.name} {dtype} on {args.device}", flush=True)
            rows += evaluate(spec, dtype, args.device, text, tag, args.max_tokens, loader)

    command = "python -m evaluation.perplexity " + " ".join(sys.argv[1:] if argv is None else argv)
    json_path = write_results("perplexity", rows, command.strip(), args.out_dir)
    bar_chart(
        rows,
        ["perplexity", "masked_perplexity", "rel_delta_perplexity", "rel_delta_masked_perplexity"],
        json_path.with_suffix(".png"),
        f"eet_hf perplexity ({json_path.stem})",
    )
    failed = [r for r in rows if r.get("pass") is False]
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: ""}[r.get("pass")]
        print(f"{r['case']:<34} {r['engine']:<8} {r['metric']:<28} {r['value']:>14.6g} {r['unit']:<6} {verdict}")
    print(f"\n{'FAILED' if failed else 'passed'}; results in {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
