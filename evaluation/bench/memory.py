"""Suite `memory`: peak GPU memory of each engine against HF sdpa per generate case, and `largest-gpt`.

Peaks come from the generate suite's results when they exist (`<out-dir>/generate-<device>.json`, else
evaluation/results/): the same runs, so no GPU time is spent twice. Without them the peaks are measured here
(one warm generate, then one measured generate(new=128) per engine; hf-static-compile is left out: its compile
would dominate the suite's time). Off CUDA there is no allocator peak to read and that part is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..results_io import RESULTS_DIR, device_slug
from ..results_io import make_row as row
from . import engines as E
from . import generate as G
from . import largest
from .context import RunContext
from .output import error_row
from .timing import free_memory, peak_gib, reset_peak

NAME = "memory"
HEADLINE = ["peak_gib", "peak_ratio_vs_hf_sdpa", "params_billion"]
LOG_METRICS = ()
MEASURED_ENGINES = ("hf-eager", "hf-sdpa", "eet")
BASE = "hf-sdpa"


def model_names(quick: bool) -> list[str]:
    return [*G.model_names(quick), largest.CASE]


def ratio_rows(peaks: list[dict]) -> list[dict]:
    """peak / HF sdpa's peak for every engine with a peak on a case where HF sdpa has one."""
    base = {r["case"]: r["value"] for r in peaks if r["engine"] == BASE and r["metric"] == "peak_gib"}
    return [
        row(r["case"], r["engine"], "peak_ratio_vs_hf_sdpa", r["value"] / base[r["case"]], "ratio")
        for r in peaks
        if r["metric"] == "peak_gib" and r["engine"] != BASE and base.get(r["case"])
    ]


def generate_peaks(out_dir: Path) -> tuple[list[dict], Path | None]:
    """peak_gib rows of an earlier generate run on this device (out_dir first, then evaluation/results)."""
    for folder in dict.fromkeys([Path(out_dir), RESULTS_DIR]):
        path = folder / f"{G.NAME}-{device_slug()}.json"
        if path.is_file():
            rows = [r for r in json.loads(path.read_text(encoding="utf-8"))["rows"] if r["metric"] == "peak_gib"]
            if rows:
                return rows, path
    return [], None


def measure_peaks(ctx: RunContext) -> list[dict]:
    rows: list[dict] = []
    models, prompt, new = G.plan(ctx.quick)
    for shape, batches, engines in models:
        if not ctx.wants_model(shape.name):
            continue
        for engine in (e for e in engines if e in MEASURED_ENGINES and ctx.wants_engine(e)):
            for batch in batches:
                case = f"{shape.name}/bs{batch}/prompt{prompt}/new{new}"
                rows.append(one_peak(ctx, shape, engine, batch, prompt, new, case))
    return rows


def one_peak(ctx: RunContext, shape, engine: str, batch: int, prompt: int, new: int, case: str) -> dict:
    if ctx.budget.spent():
        return error_row(case, engine, f"skipped: suite budget of {ctx.budget.seconds:.0f} s spent")
    ctx.log(f"memory {case} {engine}")
    model = None
    try:
        model = shape.build(ctx.device, ctx.dtype)
        prepared = E.prepare(model, engine, ctx.device)
        ids = G.prompt_ids(model.config.vocab_size, batch, prompt, ctx.device)
        kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)
        with torch.inference_mode():
            prepared.runner.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)
            reset_peak(ctx.device)
            prepared.runner.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        return row(case, engine, "peak_gib", peak_gib(ctx.device), "GiB")
    except Exception as exc:  # noqa: BLE001 - OOM or an engine failure: record it, go on
        return error_row(case, engine, exc)
    finally:
        model = None  # drop the last reference before freeing the cache
        free_memory(ctx.device)


def run(ctx: RunContext, out_dir: Path) -> list[dict]:
    rows: list[dict] = []
    if ctx.device == "cuda":
        peaks, source = generate_peaks(out_dir)
        wanted = [r for r in peaks if ctx.wants_model(r["case"].split("/")[0]) and ctx.wants_engine(r["engine"])]
        if wanted:
            ctx.notes.append(f"peak_gib rows copied from {source} (torch.cuda.max_memory_allocated over a timed "
                             "generate, weights included)")
            peaks = wanted
        else:
            ctx.notes.append("peak_gib measured here: max_memory_allocated over one generate after a warm one")
            peaks = measure_peaks(ctx)
        rows += peaks + ratio_rows([r for r in peaks if r["metric"] == "peak_gib"])
    else:
        ctx.notes.append("no CUDA device: allocator peaks are not measured; largest-gpt searches tiny shapes "
                         f"against a pretend {largest.QUICK_FREE_BYTES // 2**20} MiB device")
    if ctx.wants_model(largest.CASE):
        rows += largest.run(ctx)
    return rows
