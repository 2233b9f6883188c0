"""Append the target notes to a kernels results file (evaluation/results/kernels-<gpu>.md), computed from its JSON:
decode attention's share of the copy ceiling on the K+V bytes (target >= 60% at batch 1, context >= 2048) next to
copy-same-bytes and cuDNN, and prefill eet against the fastest torch backend (unpadded: within 10%; padded:
faster).

    python scripts/kernel_notes.py evaluation/results/kernels-h200.json [--note TEXT ...]

Rewrites the markdown's "## Notes" section (kept text from --note first, then the computed lines).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CEILING_GBPS = 4160.0  # the large-copy ceiling measured on the H200 (BASELINES.md)
TORCH = ("torch-sdpa-flash", "torch-sdpa-efficient", "torch-sdpa-cudnn")


def decode_lines(values: dict) -> list[str]:
    cases = sorted({c for c, _, _ in values if c.startswith("decode/")}, key=_decode_order)
    out = []
    for case in cases:
        eet = values.get((case, "eet", "gbps"))
        copy = values.get((case, "copy-same-bytes", "gbps"))
        cudnn = values.get((case, "torch-sdpa-cudnn", "gbps"))
        if eet is None:
            continue
        batch, ctx = _decode_order(case)[:2]
        target = " (target: >= 60%)" if batch == 1 and ctx >= 2048 else ""
        parts = [f"{case}: eet {100 * eet / CEILING_GBPS:.0f}% of 4.16 TB/s{target}"]
        if copy:
            parts.append(f"copy of the same bytes {100 * copy / CEILING_GBPS:.0f}%, eet/copy {100 * eet / copy:.0f}%")
        if cudnn:
            parts.append(f"cuDNN {100 * cudnn / CEILING_GBPS:.0f}%")
        out.append(", ".join(parts))
    return out


def prefill_lines(values: dict) -> list[str]:
    cases = sorted({c for c, _, _ in values if c.startswith("prefill/")})
    out = []
    for case in cases:
        eet = values.get((case, "eet", "ms"))
        dispatch = values.get((case, "eet-dispatch", "ms"))
        torch_ms = {e: values[(case, e, "ms")] for e in TORCH if (case, e, "ms") in values}
        if eet is None or not torch_ms:
            continue
        best_engine = min(torch_ms, key=torch_ms.get)
        best = torch_ms[best_engine]
        padded = "/none/" not in case
        line = f"{case}: eet kernel {eet * 1e3:.1f} us = {eet / best:.2f}x the fastest torch ({best_engine}, {best * 1e3:.1f} us)"
        if dispatch is not None:
            line += f"; eet-dispatch {dispatch * 1e3:.1f} us = {dispatch / best:.2f}x"
        line += " (target: faster)" if padded else " (target: within 1.10x)"
        out.append(line)
    return out


def _decode_order(case: str) -> tuple[int, int, str]:
    """(batch, context, case) of a decode case name like decode/bs1/h25/d64/ctx2048/fp16."""
    batch, ctx = re.search(r"/bs(\d+)/", case), re.search(r"/ctx(\d+)/", case)
    return int(batch.group(1)) if batch else 0, int(ctx.group(1)) if ctx else 0, case


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results_json")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    path = Path(args.results_json)
    rows = json.loads(path.read_text())["rows"]
    values = {(r["case"], r["engine"], r["metric"]): r["value"] for r in rows}
    md = path.with_suffix(".md")
    text = md.read_text()
    text = text.split("\n## Notes")[0].rstrip("\n")
    lines = [*args.note, *decode_lines(values), *prefill_lines(values)]
    md.write_text(text + "\n\n## Notes\n\n" + "".join(f"- {n}\n" for n in lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
