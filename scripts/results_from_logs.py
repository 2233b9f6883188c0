"""Results files from the logs of a GPU run that ended before writing them (a stage's time limit), in the format
of DESIGN.md: `python -m evaluation.bench` prints every measurement as it goes ("encoder <case> <engine>", then
"<ms> ms (first call <s> s)"), so what was measured is recoverable; the meta (GPU, driver, torch, transformers)
comes from tests/gpu/run.sh's env.txt of the same run, not from this machine.

    python scripts/results_from_logs.py --bench-log LOG --env ENV_TXT --date ISO --suite NAME \
        --command "what ran on the GPU" [--note TEXT ...] [--out-dir evaluation/results]

Writes <suite>-h200.json and .md: one row per (case, engine, metric) for ms and warmup_s, a case x engine table
of ms, and the notes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CASE_LINE = re.compile(r"\] (?:encoder|generate) (\S+) (\S+)$")
TIME_LINE = re.compile(r"\]\s+([\d.]+) ms \(first call ([\d.]+) s\)")


def bench_rows(log: str) -> list[dict]:
    """(case, engine) lines followed by their timing line; a case cut off by the time limit has no row."""
    rows, current = [], None
    for line in log.splitlines():
        if m := CASE_LINE.search(line):
            current = (m.group(1), m.group(2))
        elif (m := TIME_LINE.search(line)) and current:
            case, engine = current
            rows.append({"case": case, "engine": engine, "metric": "ms", "value": float(m.group(1)), "unit": "ms"})
            rows.append({"case": case, "engine": engine, "metric": "warmup_s", "value": float(m.group(2)), "unit": "s"})
            current = None
    return rows


def env_meta(env_txt: str) -> dict:
    """GPU, driver, torch and transformers from run.sh's env stage output."""
    gpu = driver = torch_v = tf_v = None
    for line in env_txt.splitlines():
        if line.startswith("torch "):
            parts = line.split()
            torch_v, tf_v = parts[1], parts[3]
        elif "," in line and not line.startswith("name"):
            gpu, driver = (p.strip() for p in line.split(",")[:2])
    return {"gpu": gpu, "driver": driver, "torch": torch_v, "transformers": tf_v}


def ms_table(rows: list[dict]) -> list[str]:
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    ms = {(r["case"], r["engine"]): r["value"] for r in rows if r["metric"] == "ms"}
    lines = ["| case | " + " | ".join(engines) + " |", "|" + "---|" * (len(engines) + 1)]
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(f"{ms[(case, e)]:.3f}" if (case, e) in ms else "" for e in engines)
                     + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-log", type=Path, required=True)
    parser.add_argument("--env", type=Path, required=True, help="env.txt of the same run")
    parser.add_argument("--date", required=True, help="when the run happened (ISO 8601)")
    parser.add_argument("--suite", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out-dir", type=Path, default=Path("evaluation/results"))
    args = parser.parse_args()
    rows = bench_rows(args.bench_log.read_text())
    if not rows:
        raise SystemExit(f"no measurements in {args.bench_log}")
    meta = {**env_meta(args.env.read_text()), "date": args.date, "command": args.command}
    stem = args.out_dir / f"{args.suite}-h200"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# {args.suite} on {meta['gpu']}", ""] + [f"- {k}: `{v}`" for k, v in meta.items() if v]
    lines += ["", "## ms", "", *ms_table(rows), "", "## Notes", ""] + [f"- {n}" for n in args.note]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} rows -> {stem}.json, .md")


if __name__ == "__main__":
    main()
