"""Train the embedded default models (eet_hf/models/): a tiny GPT-2 (causal LM) and a tiny BERT (masked LM).

Data: the docstrings of this Python's standard library, read from its .py files with `ast` (no network).
Files are walked in sorted order, docstrings de-duplicated, then split 95/5 with a seeded shuffle; the 5%
goes to eet_hf/models/heldout.txt for the perplexity suite. Each family gets its own byte-level BPE tokenizer.

Everything is seeded and single-process, so a rerun on the same Python/torch/CPU gives the same files.
Budget: about 12 minutes on 2 CPU cores (bf16 autocast on CPU roughly doubles the training speed).

    python tools/train_tiny_models.py            # writes eet_hf/models/{gpt2-tiny,bert-tiny,heldout.txt}

The pieces live in tools/tiny_training/: corpus (data), tokenizer, data (rows, masking), loop (optimiser),
families (the GPT-2 and BERT recipes), report (saving, samples, TRAINING.md). This file is the command line.
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
from tiny_training.families import train_bert, train_gpt2
from tiny_training.report import fill_mask_samples, mean_tail, samples, save, write_training_md

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "eet_hf" / "models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
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
    parser.add_argument(
        "--mask-rate", type=float, default=0.3, help="BERT training masking rate (30%% learns faster than 15%%)"
    )
    parser.add_argument("--heldout-share", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    started = time.perf_counter()
    docs = collect_docstrings()
    train_docs, held_docs = split(docs, args.heldout_share, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    heldout_path = args.out / "heldout.txt"
    heldout_path.write_text("\n\n".join(held_docs) + "\n", encoding="utf-8")
    print(f"{len(docs)} docstrings: {len(train_docs)} train, {len(held_docs)} held out -> {heldout_path}")

    gpt2 = train_gpt2(train_docs, held_docs, args)
    gpt2_minutes = (time.perf_counter() - started) / 60
    bert = train_bert(train_docs, held_docs, args)
    total_minutes = (time.perf_counter() - started) / 60

    prompts = ["Return the", "This module provides", "Create a new", "If the file"]
    masked = ["Return the [MASK] of the list.", "Raise a ValueError if the [MASK] is not found."]
    report = {
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:])),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "seed": args.seed,
        "docstrings": {"train": len(train_docs), "heldout": len(held_docs)},
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": {"gpt2": round(gpt2_minutes, 2), "total": round(total_minutes, 2)},
        "gpt2": {
            "train_tokens": gpt2["tokens"],
            "final_train_loss": round(mean_tail(gpt2["losses"]), 4),
            "heldout_loss": round(gpt2["heldout_loss"], 4),
            "greedy": samples(gpt2, prompts),
            "sampled": samples(gpt2, prompts, sample=True),
        },
        "bert": {
            "train_tokens": bert["tokens"],
            "final_train_loss": round(mean_tail(bert["losses"]), 4),
            "heldout_mlm_loss": round(bert["heldout_loss"], 4),
            "fill_mask": fill_mask_samples(bert, masked),
        },
    }
    save(gpt2, args.out / "gpt2-tiny", torch.float16)
    save(bert, args.out / "bert-tiny", torch.float16)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_training_md(report, args.out / "TRAINING.md")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
