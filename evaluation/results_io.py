"""Shared results writing for all suites: meta collection, JSON + markdown table.

JSON shape (every suite):
    {"meta": {"gpu", "driver", "torch", "transformers", "date", "command"},
     "rows": [{"case", "engine", "metric", "value", "unit"}, ...]}
Rows may carry extra keys (e.g. "pass"); readers must ignore keys they do not know.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import subprocess
from pathlib import Path

import torch
import transformers

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROW_KEYS = ("case", "engine", "metric", "value", "unit")
ENGINES = ("eet", "hf-eager", "hf-sdpa", "hf-static-compile", "torch-compile", "torch-compile-ro", "reference")


def device_slug() -> str:
    """'cpu' without CUDA; 'h200' on an H200; else the GPU name lower-cased with non-alphanumerics as '-'."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    if "H200" in name.upper():
        return "h200"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def collect_meta(command: str) -> dict[str, object]:
    """Environment facts stored next to every result set."""
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "driver": _driver_version() if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def make_row(case: str, engine: str, metric: str, value: float | int | None, unit: str = "", **extra) -> dict:
    """One result row; `engine` must be one of ENGINES."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} not in {ENGINES}")
    return {"case": case, "engine": engine, "metric": metric, "value": value, "unit": unit, **extra}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return (
            f"{value:.3g}"
            if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5)
            else f"{value:.4f}".rstrip("0").rstrip(".")
        )
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a GitHub markdown table: the five standard columns plus any extra keys seen."""
    extra = sorted({k for r in rows for k in r} - set(ROW_KEYS))
    cols = [*ROW_KEYS, *extra]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _json_safe(value: object) -> object:
    # JSON has no NaN/inf: write them as strings so the file stays strict JSON.
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    return value


def write_results(suite: str, rows: list[dict], command: str, out_dir: Path | None = None) -> Path:
    """Write `<suite>-<device>.json` and `.md` into `out_dir` (default evaluation/results/); returns the JSON path."""
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"result row {row} lacks {missing}")
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = collect_meta(command)
    stem = f"{suite}-{device_slug()}"
    payload = {"meta": meta, "rows": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    header = [f"# {suite} on {meta['gpu'] or 'CPU'}", ""]
    header += [f"- {k}: `{v}`" for k, v in meta.items() if v is not None]
    (out_dir / f"{stem}.md").write_text("\n".join([*header, "", markdown_table(rows), ""]), encoding="utf-8")
    return json_path
