"""`python -m evaluation.bench`: run benchmark suites and write <suite>-<device>.{json,md,png}.

    python -m evaluation.bench --suite generate --models gpt2,gpt2-xl --out-dir $OUT
    python -m evaluation.bench --quick --out-dir /tmp/bench       # every suite on CPU, tiny configs (CI)

Each suite is bounded by --budget-s (default per suite below, under the GPU host's 10-minute call limit):
cases not started when it is spent are recorded as error rows saying so. --merge keeps rows of an existing
result file for the (case, engine) pairs this run did not measure, so a suite can be split over several calls.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import traceback
from pathlib import Path

import torch
import transformers

from ..results_io import RESULTS_DIR
from . import cold_start, decode_profile, decoder_layer, encoder, generate, largest, memory, sentence_embed
from .context import Budget, RunContext
from .output import error_row, write_suite

SUITES = {m.NAME: m for m in (generate, encoder, decoder_layer, memory, cold_start, decode_profile, sentence_embed)}
# Seconds per suite by default: each fits one GPU call with room for imports, the last case and writing.
DEFAULT_BUDGET_S = {"generate": 480, "encoder": 420, "decoder-layer": 300, "memory": 360, "cold-start": 560,
                    "decode-profile": 300, "sentence-embed": 400}
QUICK_BUDGET_S = 120
ENGINE_NAMES = ("hf-eager", "hf-sdpa", "hf-static-compile", "torch-compile", "torch-compile-ro", "eet")


def _names(values: list[str] | None) -> frozenset[str]:
    return frozenset(n.strip() for v in values or [] for n in v.split(",") if n.strip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="append", choices=list(SUITES), help="repeatable; default: all")
    parser.add_argument("--quick", action="store_true", help="CPU, fp32, tiny configs, reference ops (CI)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--models", action="append", help="comma-separated model names to keep (repeatable)")
    parser.add_argument("--engines", action="append", help=f"comma-separated subset of {', '.join(ENGINE_NAMES)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3; 1 quick)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock cap per suite, seconds")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows of other (case, engine) pairs")
    parser.add_argument("--hf-sdpa-without-cudnn", action="store_true",
                        help="decoder-layer: run hf-sdpa with torch's cuDNN SDPA backend off (its per-length plan "
                             "builds make a first pass over long decode sequences take minutes); noted in the results")
    args = parser.parse_args(argv)
    args.suite = args.suite or list(SUITES)
    args.models, args.engines = _names(args.models), _names(args.engines)
    unknown_engines = sorted(args.engines - set(ENGINE_NAMES))
    if unknown_engines:
        parser.error(f"unknown engine(s) {unknown_engines}; known: {', '.join(ENGINE_NAMES)}")
    known = {n for s in args.suite for n in _model_names(s, args.quick)}
    unknown_models = sorted(args.models - known)
    if unknown_models:
        parser.error(f"unknown model(s) {unknown_models} for suite(s) {args.suite}; known: {', '.join(sorted(known))}")
    if not args.quick and not torch.cuda.is_available():
        parser.error("the full benchmarks need a CUDA GPU; use --quick for the CPU smoke run")
    return args


def _model_names(suite: str, quick: bool) -> list[str]:
    return SUITES[suite].model_names(quick)


class _NotesLog(logging.Handler):
    """eet_hf's warnings (fallbacks are logged once per process, with the reason) into the suite's notes."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(f"log: {record.getMessage()}")


def run_suite(name: str, args: argparse.Namespace, command: str) -> bool:
    """Run one suite and write its files; False when the suite itself crashed (a bug, not an engine error)."""
    module = SUITES[name]
    budget = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S[name])
    ctx = RunContext(
        quick=args.quick,
        device="cpu" if args.quick else "cuda",
        dtype=torch.float32 if args.quick else torch.float16,
        repeats=args.repeats or (1 if args.quick else 3),
        budget=Budget(budget),
        models=args.models,
        engines=args.engines,
        hf_sdpa_without_cudnn=args.hf_sdpa_without_cudnn,
    )
    if args.hf_sdpa_without_cudnn:
        ctx.notes.append("hf-sdpa rows of this run: torch's cuDNN SDPA backend off (--hf-sdpa-without-cudnn); torch "
                         "picks among flash, efficient and math attention instead.")
    ctx.log(f"suite {name}: budget {budget:.0f} s, {ctx.device} {ctx.dtype}, repeats {ctx.repeats}")
    ok = True
    handler = _NotesLog(ctx.notes)
    logging.getLogger("eet_hf").addHandler(handler)
    try:
        rows = module.run(ctx, args.out_dir) if module is memory else module.run(ctx)
    except Exception as exc:  # noqa: BLE001 - keep the other suites going; the traceback says where
        traceback.print_exc()
        rows, ok = [error_row(f"{name}/suite", "reference", exc)], False
    finally:
        logging.getLogger("eet_hf").removeHandler(handler)
    if args.quick:
        ctx.notes.append("--quick: CPU, fp32, tiny configs, eet on its reference (PyTorch) ops: checks the "
                         "harness, not speed")
    path = write_suite(name, rows, command, args.out_dir, module.HEADLINE, ctx.notes, module.LOG_METRICS, args.merge)
    errors = sum(r["metric"] == "error" for r in rows)
    ctx.log(f"suite {name}: {len(rows)} rows ({errors} error rows) -> {path}")
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python -m evaluation.bench " + " ".join(shlex.quote(a) for a in argv)
    verbosity, threads = transformers.logging.get_verbosity(), torch.get_num_threads()
    transformers.logging.set_verbosity_error()
    if args.quick:
        torch.set_num_threads(1)  # tiny matmuls: a second OpenMP thread only adds spin-waits on a busy CI host
    try:
        results = [run_suite(name, args, command) for name in dict.fromkeys(args.suite)]
    finally:  # called in-process by tests: leave the interpreter as it was
        transformers.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)
    return 0 if all(results) else 1


__all__ = ["SUITES", "largest", "main"]
