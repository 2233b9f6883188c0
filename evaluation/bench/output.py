"""Writing a suite's results: JSON + markdown through evaluation.results_io, then a pivot table per headline
metric, the suite's notes (which code path each engine ran) and a PNG of the headline metrics."""

from __future__ import annotations

import json
from pathlib import Path

from ..plots import _pyplot
from ..results_io import ENGINES, _fmt, device_slug, make_row, write_results

ERROR = "error"


def _one_line(text: str, limit: int = 300) -> str:
    # Markdown table cells: no newlines, no pipes.
    return " ".join(text.split()).replace("|", "/")[:limit]


def error_row(case: str, engine: str, problem: BaseException | str) -> dict:
    """The row recorded instead of a measurement when an engine fails (or a case was skipped)."""
    message = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
    return make_row(case, engine, ERROR, None, "", error=_one_line(message))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Old rows, except where this run measured the same (case, engine), then this run's rows."""
    fresh = {(r["case"], r["engine"]) for r in new}
    return [r for r in old if (r["case"], r["engine"]) not in fresh] + new


def pivot(rows: list[dict], metric: str) -> str:
    """A case x engine markdown table of one metric (errors show as 'error')."""
    picked = [r for r in rows if r["metric"] in (metric, ERROR)]
    engines = list(dict.fromkeys(r["engine"] for r in picked))
    cases = list(dict.fromkeys(r["case"] for r in picked if r["metric"] == metric))
    values = {(r["case"], r["engine"]): r["value"] for r in picked if r["metric"] == metric}
    errors = {(r["case"], r["engine"]) for r in picked if r["metric"] == ERROR}
    lines = [f"### {metric}", "", "| case | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]
    for case in cases:
        cells = [_fmt(values[(case, e)]) if (case, e) in values else (ERROR if (case, e) in errors else "")
                 for e in engines]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], metrics: list[str], path: Path, title: str, log_metrics: tuple[str, ...]) -> Path | None:
    """One panel per metric: cases on x, one bar per engine."""
    plt = _pyplot()
    if plt is None:
        print(f"matplotlib is not installed: skipping {path.name}", flush=True)
        return None
    metrics = [m for m in metrics if any(r["metric"] == m and isinstance(r["value"], (int, float)) for r in rows)]
    if not metrics:
        return None
    cases_max = max(len({r["case"] for r in rows if r["metric"] == m}) for m in metrics)
    width = min(40.0, max(8.0, 0.45 * cases_max + 2))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 3.4 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        picked = [r for r in rows if r["metric"] == metric and isinstance(r["value"], (int, float))]
        cases = list(dict.fromkeys(r["case"] for r in picked))
        engines = list(dict.fromkeys(r["engine"] for r in picked))
        bar = 0.8 / len(engines)
        for i, engine in enumerate(engines):
            values = {r["case"]: float(r["value"]) for r in picked if r["engine"] == engine}
            xs = [j + i * bar for j, c in enumerate(cases) if c in values]
            ys = [max(values[c], 1e-9) if metric in log_metrics else values[c] for c in cases if c in values]
            ax.bar(xs, ys, width=bar, label=engine, color=f"C{ENGINES.index(engine) % 10}")  # same colour per engine
        ax.set_xticks([j + 0.4 - bar / 2 for j in range(len(cases))])
        ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        if metric in log_metrics:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_suite(
    suite: str,
    rows: list[dict],
    command: str,
    out_dir: Path,
    headline: list[str],
    notes: list[str],
    log_metrics: tuple[str, ...] = (),
    merge: bool = False,
) -> Path:
    """`<suite>-<device>.json/.md/.png` in out_dir; with `merge`, rows of an earlier file for other
    (case, engine) pairs are kept (so one suite can be run in several GPU calls)."""
    json_path = Path(out_dir) / f"{suite}-{device_slug()}.json"
    if merge and json_path.is_file():
        earlier = json.loads(json_path.read_text(encoding="utf-8"))
        rows = merge_rows(earlier["rows"], rows)
        command = f"{earlier['meta'].get('command', '')} ; {command}"
    json_path = write_results(suite, rows, command, out_dir=out_dir)
    md_path = json_path.with_suffix(".md")
    sections = [pivot(rows, m) for m in headline if any(r["metric"] == m for r in rows)]
    errors = [r for r in rows if r["metric"] == ERROR]
    extra = ["", "## By engine", "", *[s + "\n" for s in sections]]
    extra += ["## Notes", "", *[f"- {_one_line(n, 2000)}" for n in dict.fromkeys(notes)]]
    if errors:
        extra += ["", f"{len(errors)} case(s) recorded an error row instead of a measurement (see the table above)."]
    md_path.write_text(md_path.read_text(encoding="utf-8") + "\n".join(extra) + "\n", encoding="utf-8")
    plot(rows, headline, json_path.with_suffix(".png"), f"{suite} ({device_slug()})", log_metrics)
    return json_path
