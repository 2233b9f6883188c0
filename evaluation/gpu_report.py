"""After tests/gpu/run.sh's tests: turn the GPU test results and the kernel benchmarks into results files.

    python -m evaluation.gpu_report --out $OUT

Writes gpu-tests-<device>.json/.md (every GPU test case, pass/fail) and kernels-<device>.json/.md (eet kernels
vs the torch ops they replace, measured side by side in this process), and prints a short table last.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from .results_io import device_slug, write_results


def test_rows(junit_xml: Path) -> list[dict]:
    rows = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            outcome = "skipped"
        elif case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        else:
            outcome = "passed"
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        rows.append({"case": name, "engine": "eet", "metric": outcome, "value": 1, "unit": "case"})
    return rows


def kernel_rows() -> list[dict]:
    from . import bench_kernels_attention, bench_kernels_norm

    rows: list[dict] = []
    for bench in (bench_kernels_norm, bench_kernels_attention):
        try:
            bench.run(rows)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' numbers
            print(f"benchmark {bench.__name__} failed: {exc!r}", file=sys.stderr)
    return rows


def _print_kernel_table(rows: list[dict]) -> None:
    ms = {(r["case"], r["engine"]): r["value"] for r in rows if r["metric"] == "ms"}
    cases = sorted({c for c, _ in ms})
    print(f"{'kernel case':<52} {'eet ms':>9} {'best torch ms':>14} {'speedup':>8}")
    for case in cases:
        eet = ms.get((case, "eet"))
        others = [v for (c, e), v in ms.items() if c == case and e not in ("eet", "copy-same-bytes")]
        if eet is None or not others:
            continue
        best = min(others)
        print(f"{case:<52} {eet:>9.4f} {best:>14.4f} {best / eet:>7.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder with gpu-tests.xml; results are written here")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    command = "bash tests/gpu/run.sh"
    junit = args.out / "gpu-tests.xml"
    # Without the tests' XML (EET_SKIP_TESTS) write no gpu-tests file: an empty one would look like a result.
    tests = test_rows(junit) if junit.exists() else []
    if tests:
        write_results("gpu-tests", tests, command, out_dir=args.out)
    kernels = [] if args.skip_bench else kernel_rows()
    if kernels:
        write_results("kernels", kernels, command, out_dir=args.out)
        _print_kernel_table(kernels)
    if not junit.exists():
        print(f"\nno {junit.name} in {args.out}: GPU tests not run here")
        return 0
    counts = Counter(r["metric"] for r in tests)
    print(
        f"\nGPU tests on {device_slug()}: {counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped"
    )
    for r in tests:
        if r["metric"] == "failed":
            print(f"  FAILED {r['case']}")
    return 1 if counts.get("failed") or not tests else 0


if __name__ == "__main__":
    raise SystemExit(main())
