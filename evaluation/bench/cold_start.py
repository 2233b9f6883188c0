"""Suite `cold-start`: seconds from a built model to its first generated token in a fresh process —
accelerate() (which builds or loads eet's CUDA kernels) plus generate(max_new_tokens=1).

Cases: `gpt2/empty-build-cache` (TORCH_EXTENSIONS_DIR set to a new empty directory: the JIT build runs),
`gpt2/warm-build-cache` (the same directory again: the build is cached), and HF sdpa in a fresh process for
comparison. Metric `s` (accelerate + first token), with `prepare_s`, `first_token_s` and `import_s` beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..results_io import make_row as row
from .context import RunContext
from .output import error_row

NAME = "cold-start"
HEADLINE = ["s", "prepare_s", "first_token_s"]
LOG_METRICS = ("s",)
CHILD_TIMEOUT_S = 540  # the JIT build of every kernel; under the GPU host's 10-minute call limit
REPO_ROOT = Path(__file__).resolve().parents[2]


def model_names(quick: bool) -> list[str]:
    return ["gpt2-tiny" if quick else "gpt2"]


def child(ctx: RunContext, engine: str, extensions_dir: str) -> dict:
    """Run cold_start_child in a fresh interpreter; returns its JSON line."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": extensions_dir}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    timeout = max(30.0, min(CHILD_TIMEOUT_S, ctx.budget.left()))
    done = subprocess.run(
        [sys.executable, "-m", "evaluation.bench.cold_start_child", "--engine", engine, "--device", ctx.device],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"child exited {done.returncode}: {' / '.join(tail)}")
    return json.loads(lines[-1])


def rows_for(case: str, engine: str, got: dict, ctx: RunContext) -> list[dict]:
    extra = {}
    if engine == "eet" and ctx.device == "cuda" and got["kernels"] != "cuda":
        extra["error"] = f"eet ran on {got['kernels']} ops: the CUDA build failed or is disabled"
    ctx.notes.append(f"{engine} {case}: {got['path']}; import {got['import_s']:.1f} s")
    return [
        row(case, engine, "s", got["total_s"], "s", **extra),
        row(case, engine, "prepare_s", got["prepare_s"], "s"),
        row(case, engine, "first_token_s", got["first_token_s"], "s"),
        row(case, engine, "import_s", got["import_s"], "s"),
    ]


def run(ctx: RunContext) -> list[dict]:
    name = model_names(ctx.quick)[0]
    if not ctx.wants_model(name):
        return []
    plan = [("eet", f"{name}/empty-build-cache"), ("eet", f"{name}/warm-build-cache"), ("hf-sdpa", f"{name}/fresh")]
    if ctx.quick:
        plan = plan[:1]  # CPU builds nothing: one fresh process checks the harness (each costs an interpreter start)
    rows: list[dict] = []
    ctx.notes.append("each case is a fresh `python -m evaluation.bench.cold_start_child` process; s = accelerate() "
                     "(or nothing, for HF) + generate(max_new_tokens=1) on a prompt of 16 tokens")
    with tempfile.TemporaryDirectory(prefix="eet-cold-start-") as extensions_dir:
        for engine, case in plan:
            if not ctx.wants_engine(engine):
                continue
            if ctx.budget.spent():
                rows.append(error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent"))
                continue
            ctx.log(f"cold-start {case} {engine}")
            try:
                got = child(ctx, engine, extensions_dir)
            except Exception as exc:  # noqa: BLE001 - a failed or timed-out child is a row, not a crash
                rows.append(error_row(case, engine, exc))
                continue
            ctx.log(f"  {got['total_s']:.1f} s (kernels: {got['kernels']})")
            rows += rows_for(case, engine, got, ctx)
    return rows
