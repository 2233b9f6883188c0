"""Train the embedded default models (eet_hf/models/): tiny GPT-2 and Llama (causal LMs) and a tiny BERT (masked LM).

Data: the docstrings of this Python's standard library, read from its .py files with `ast` (no network).
Files are walked in sorted order, docstrings de-duplicated, then split 95/5 with a seeded shuffle; the 5%
goes to eet_hf/models/heldout.txt for the perplexity suite. Each family gets its own byte-level BPE tokenizer.

Everything is seeded and single-process, so a rerun on the same Python/torch/CPU gives the same files.
Budget: about 20 minutes on 2 CPU cores (bf16 autocast on CPU roughly doubles the training speed).

    python tools/train_tiny_models.py               # writes eet_hf/models/{gpt2,bert,llama}-tiny, heldout.txt
    python tools/train_tiny_models.py --only llama  # only llama-tiny; the others' files and report are kept

The pieces live in tools/tiny_training/: corpus (data), tokenizer, data (rows, masking), loop (optimiser),
families (the GPT-2, Llama and BERT recipes), report (saving, samples, TRAINING.md). This file is the command line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from tiny_training.corpus import collect_docstrings, split
from tiny_training.families import train_bert, train_gpt2, train_llama
from tiny_training.report import fill_mask_samples, mean_tail, samples, save, write_training_md

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "eet_hf" / "models"
FAMILIES = ("gpt2", "bert", "llama")  # training order
# Arguments every family's run shares: a partial run (--only) must use the ones the kept models were made with.
SHARED_ARGS = ("seed", "vocab_size", "tokens_per_step", "long_share", "heldout_share")
PROMPTS = ["Return the", "This module provides", "Create a new", "If the file"]
MASKED = ["Return the [MASK] of the list.", "Raise a ValueError if the [MASK] is not found."]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--only", action="append", choices=FAMILIES, help="train only this family (repeatable); default: all"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--tokens-per-step", type=int, default=2048)
    parser.add_argument("--long-share", type=float, default=0.3, help="share of steps on 512-token rows")
    parser.add_argument("--gpt2-steps", type=int, default=1500)
    parser.add_argument("--gpt2-lr", type=float, default=2e-3)
    parser.add_argument("--gpt2-short-len", type=int, default=256)
    parser.add_argument("--bert-steps", type=int, default=1500)
    parser.add_argument("--bert-lr", type=float, default=1e-3)
    parser.add_argument("--bert-short-len", type=int, default=128)
    parser.add_argument("--llama-steps", type=int, default=1500)
    parser.add_argument("--llama-lr", type=float, default=2e-3)
    parser.add_argument("--llama-short-len", type=int, default=256)
    parser.add_argument(
        "--mask-rate", type=float, default=0.3, help="BERT training masking rate (30%% learns faster than 15%%)"
    )
    parser.add_argument("--heldout-share", type=float, default=0.05)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 is much faster where other jobs share the cores)"
    )
    return parser.parse_args(argv)


def base_report(args: argparse.Namespace, partial: bool) -> dict:
    """The report to add this run's families to: a fresh one, or (partial run) the kept models' report, whose
    shared arguments this run must match so every model in the folder comes from one recipe."""
    path = args.out / "training_report.json"
    current = {k: str(v) for k, v in vars(args).items() if k not in ("out", "only", "threads")}
    if not partial:
        return {"args": {"out": str(args.out), **current, "threads": str(args.threads)}, "minutes": {}}
    if not path.exists():
        raise SystemExit(f"--only needs the report of the kept models, {path} is missing; run without --only")
    report = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k in SHARED_ARGS if report["args"].get(k) != current[k]]
    if differ:
        raise SystemExit(
            f"--only: {differ} differ from {path} ({[report['args'].get(k) for k in differ]}); "
            "the kept models were trained with those, so retrain all families or pass the same values"
        )
    report["args"].update({k: v for k, v in current.items() if k not in SHARED_ARGS})
    return report


def write_heldout(held_docs: list[str], path: Path, partial: bool) -> None:
    """heldout.txt; a partial run checks it instead (another split would mean training on the kept models' test)."""
    text = "\n\n".join(held_docs) + "\n"
    if partial and path.exists() and path.read_text(encoding="utf-8") != text:
        raise SystemExit(f"{path} differs from this Python's docstring split; retrain all families without --only")
    path.write_text(text, encoding="utf-8")


def causal_section(result: dict) -> dict:
    return {
        "train_tokens": result["tokens"],
        "final_train_loss": round(mean_tail(result["losses"]), 4),
        "heldout_loss": round(result["heldout_loss"], 4),
        "greedy": samples(result, PROMPTS),
        "sampled": samples(result, PROMPTS, sample=True),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [f for f in FAMILIES if f in (args.only or FAMILIES)]
    partial = len(only) < len(FAMILIES)
    command = "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:]))

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    report = base_report(args, partial)
    docs = collect_docstrings()
    train_docs, held_docs = split(docs, args.heldout_share, args.seed)
    write_heldout(held_docs, args.out / "heldout.txt", partial)
    print(f"{len(docs)} docstrings: {len(train_docs)} train, {len(held_docs)} held out")

    trainers = {"gpt2": train_gpt2, "bert": train_bert, "llama": train_llama}
    results = {}
    family_started = started  # the first family's minutes include reading the corpus
    for family in only:
        results[family] = trainers[family](train_docs, held_docs, args)
        report["minutes"][family] = round((time.perf_counter() - family_started) / 60, 2)
        family_started = time.perf_counter()
    total = round((time.perf_counter() - started) / 60, 2)
    if partial:
        run = {"command": command, "minutes": total, "threads": args.threads}
        report.setdefault("partial_runs", {})[",".join(only)] = run
    else:
        report["command"], report["minutes"]["total"] = command, total
    report.update(python=sys.version.split()[0], torch=torch.__version__, seed=args.seed)
    report["docstrings"] = {"train": len(train_docs), "heldout": len(held_docs)}
    for family, result in results.items():
        if family == "bert":
            report["bert"] = {
                "train_tokens": result["tokens"],
                "final_train_loss": round(mean_tail(result["losses"]), 4),
                "heldout_mlm_loss": round(result["heldout_loss"], 4),
                "fill_mask": fill_mask_samples(result, MASKED),
            }
        else:
            report[family] = causal_section(result)
        save(result, args.out / f"{family}-tiny", torch.float16)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_training_md(report, args.out / "TRAINING.md")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
