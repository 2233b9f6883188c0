"""Batch-1 decode attention against the floor of its design, as a results file (DESIGN.md format): what the decode
kernels reach at each shape of the batch-1 target (>= 60% of the 4.16 TB/s copy ceiling on the K+V bytes) next to a
decode-shaped read of the same bytes that does no arithmetic, with no merge and with each way of merging the splits
across SMs (a decode at batch 1 must split each head's keys over several SMs: one split per head leaves most SMs idle).

Inputs are the stdout of two standalone harnesses run in one device call (probe decode-floor of
scripts/device_probes.sh): scripts/harness_read_paths.cu (default run: register loads, bounds read first, block
counts 200-264, clusters of 8, atomic-ticket groups, the two-kernel combine path) and scripts/harness_decode.cu (the
decode kernels at their planned split, checked against an fp32 reference).

    python scripts/decode_floor_rows.py --read-paths read-paths.log --decode decode.log --results-dir DIR \
        --command "..."

Writes DIR/decode-floor-<gpu>.{json,md}. Each floor is the fastest of its variants over the block counts measured.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CEILING_GBPS = 4160.0  # the large-copy ceiling measured on the H200 (BASELINES.md)
TARGET_SHARE = 0.60

# read_paths variant -> engine; the variant's merge is in the engine name.
FLOOR_ENGINES = {
    "ldg": "read-no-merge",
    "ldg+c8": "read-cluster-merge",
    "ldg+t8": "read-ticket-merge",
    "ldg+t10": "read-ticket-merge",
    "ldg+k8": "read-combine-kernel",
    "ldg+k10": "read-combine-kernel",
}
# The decode shapes whose fp16 K+V bytes read_paths reads (bytes = 2 * batch * heads * ctx * d * 2).
SHAPE_OF_BYTES = {
    13107200: (1, 25, 64, 2048),
    26214400: (1, 25, 64, 4096),
    33554432: (1, 32, 128, 2048),
}

_READ = re.compile(r"^(\d+\.\d)\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+\d+%\s*$")
_DECODE = re.compile(r"^\S+ bs(\d+) h(\d+) d(\d+) ctx(\d+) planned\((\d+)\) ([\d.]+) us")


def case_name(batch: int, heads: int, d: int, ctx: int) -> str:
    return f"decode/bs{batch}/h{heads}/d{d}/ctx{ctx}/fp16"


def kv_bytes(batch: int, heads: int, d: int, ctx: int) -> int:
    return 2 * batch * heads * ctx * d * 2


def _bytes_of_mb(mb: str) -> int | None:
    # read_paths prints MB (1e6 bytes) with one decimal; the sizes it reads are the keys of SHAPE_OF_BYTES.
    return next((b for b in SHAPE_OF_BYTES if f"{b / 1e6:.1f}" == mb), None)


def parse_read_paths(text: str) -> dict[tuple[str, str], tuple[float, str]]:
    """(case, engine) -> (best us, the variant and block count that reached it), over every measured row."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for line in text.splitlines():
        m = _READ.match(line.strip())
        if not m or m.group(2) not in FLOOR_ENGINES:
            continue
        size = _bytes_of_mb(m.group(1))
        if size is None:
            continue
        key = (case_name(*SHAPE_OF_BYTES[size]), FLOOR_ENGINES[m.group(2)])
        us = float(m.group(5))
        if key not in best or us < best[key][0]:
            best[key] = (us, f"{m.group(2)}, {m.group(3)} blocks")
    return best


def parse_decode(text: str) -> dict[str, tuple[float, int]]:
    """case -> (us, planned splits) of the decode harness's planned launches."""
    out: dict[str, tuple[float, int]] = {}
    for line in text.splitlines():
        m = _DECODE.match(line.strip())
        if m:
            b, h, d, ctx, splits = (int(m.group(i)) for i in range(1, 6))
            out[case_name(b, h, d, ctx)] = (float(m.group(6)), splits)
    return out


def _case_dims(case: str) -> tuple[int, int, int, int]:
    b, h, d, ctx = (int(x) for x in re.match(r"decode/bs(\d+)/h(\d+)/d(\d+)/ctx(\d+)/", case).groups())
    return b, h, d, ctx


def build_rows(floors: dict[tuple[str, str], tuple[float, str]], decode: dict[str, tuple[float, int]]) -> list[dict]:
    """Rows for every case read_paths measured: ms (and us), gbps and share of the copy ceiling per engine. The read-* engines
    are not among results_io.ENGINES (they are probes, like the kernel bench's copy-same-bytes), so rows are built
    here."""

    def make_row(case: str, engine: str, metric: str, value: float, unit: str, **extra) -> dict:
        return {"case": case, "engine": engine, "metric": metric, "value": float(value), "unit": unit, **extra}

    rows = []
    for case in sorted({c for c, _ in floors}, key=_case_dims):
        nbytes = kv_bytes(*_case_dims(case))
        entries = []
        if case in decode:
            us, splits = decode[case]
            entries.append(("eet", us, f"decode kernels, planned split ({splits})"))
        for engine in dict.fromkeys(FLOOR_ENGINES.values()):  # each floor engine once, in FLOOR_ENGINES order
            if (case, engine) in floors:
                us, how = floors[(case, engine)]
                entries.append((engine, us, how))
        for engine, us, how in entries:
            gbps = nbytes / (us * 1e-6) / 1e9
            rows.append(make_row(case, engine, "ms", us / 1e3, "ms", how=how))
            rows.append(make_row(case, engine, "us", us, "us"))
            rows.append(make_row(case, engine, "gbps", gbps, "GB/s"))
            rows.append(make_row(case, engine, "share_of_copy_ceiling", gbps / CEILING_GBPS, ""))
    return rows


def notes(rows: list[dict]) -> list[str]:
    """Per case: the time the target needs, each engine's share, and whether any merged floor reaches the target."""
    share = {(r["case"], r["engine"]): r["value"] for r in rows if r["metric"] == "share_of_copy_ceiling"}
    out = []
    for case in sorted({c for c, _ in share}, key=_case_dims):
        need_us = kv_bytes(*_case_dims(case)) / (TARGET_SHARE * CEILING_GBPS * 1e9) * 1e6
        parts = [f"{e} {100 * s:.0f}%" for (c, e), s in share.items() if c == case]
        merged = [s for (c, e), s in share.items() if c == case and e not in ("eet", "read-no-merge")]
        verdict = ""
        if merged:
            best = max(merged)
            verdict = f"; best merged read {100 * best:.0f}%: " + (
                "60% is below the floor of every merge measured"
                if best < TARGET_SHARE
                else "60% is not ruled out by the floor"
            )
        out.append(f"- {case}: 60% needs <= {need_us:.2f} us; " + ", ".join(parts) + verdict)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--read-paths", type=Path, required=True, help="stdout of scripts/harness_read_paths.cu")
    ap.add_argument("--decode", type=Path, required=True, help="stdout of scripts/harness_decode.cu")
    ap.add_argument("--results-dir", type=Path, required=True)
    ap.add_argument("--command", required=True, help="the command that produced both logs (goes into meta)")
    args = ap.parse_args(argv)
    floors = parse_read_paths(args.read_paths.read_text(encoding="utf-8"))
    decode = parse_decode(args.decode.read_text(encoding="utf-8"))
    if not floors or not decode:
        raise SystemExit(f"nothing parsed: {len(floors)} floor rows, {len(decode)} decode rows")
    rows = build_rows(floors, decode)

    from evaluation.results_io import write_results

    path = write_results("decode-floor", rows, args.command, out_dir=args.results_dir)
    md = path.with_suffix(".md")
    md.write_text(
        md.read_text(encoding="utf-8")
        + "\n## Notes\n"
        + "Share of the 4.16 TB/s copy ceiling on the K+V bytes; the read-* engines read the same bytes with no "
        + "arithmetic (scripts/harness_read_paths.cu), each the fastest block count measured.\n\n"
        + "\n".join(notes(rows))
        + "\n",
        encoding="utf-8",
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
