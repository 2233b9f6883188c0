"""Run in a fresh process by suite `cold-start`: build a GPT-2, then time accelerate() and the first generated
token. Prints one JSON line. `TORCH_EXTENSIONS_DIR` (set by the parent) decides whether the kernel build is
cached. Not imported by the suite itself: its point is to start with nothing loaded.

    python -m evaluation.bench.cold_start_child --engine eet --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()

import torch  # noqa: E402  (import time is part of what a user waits for, reported separately)
import transformers  # noqa: E402

import eet_hf  # noqa: E402

from . import engines as E  # noqa: E402
from . import shapes as S  # noqa: E402
from .timing import sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("eet", "hf-sdpa"), required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.device == "cpu":
        torch.set_num_threads(1)  # as the --quick parent: tiny shapes, a busy CI host
    import_s = time.perf_counter() - STARTED
    shape, dtype = (S.GPT2_SIZES[0], torch.float16) if args.device == "cuda" else (S.TINY_GPT2[0], torch.float32)
    model = shape.build(args.device, dtype)
    ids = torch.randint(1, min(1000, model.config.vocab_size), (1, 16)).to(args.device)
    sync(args.device)
    started = time.perf_counter()
    prepared = E.prepare(model, args.engine, args.device)
    sync(args.device)
    accelerated = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=0)
    sync(args.device)
    done = time.perf_counter()
    report = eet_hf.explain(model)
    print(json.dumps({
        "model": shape.name,
        "import_s": import_s,
        "prepare_s": accelerated - started,
        "first_token_s": done - accelerated,
        "total_s": done - started,
        "kernels": report.kernels,
        "path": prepared.path,
    }), flush=True)


if __name__ == "__main__":
    main()
