"""scripts/decode_floor_rows.py: the fastest row of each read variant becomes its engine's floor, the decode harness's
planned launches become the eet rows, and the notes say which shapes' 60% target lies below every merged floor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "decode_floor_rows.py"

# Lines in the formats the two harnesses print (values made up, not measurements).
READ_PATHS = """FIT ldg+c8: 30 clusters of 8 at once (240 blocks)
MB       variant                blocks policy        us      GB/s  %4.16
13.1     ldg                       200      0      5.30    2473.1    59%
13.1     ldg                       240      0      5.10    2570.0    62%
13.1     cpasync                   240      0      4.00    3276.8    79%
13.1     ldg+c8                    200      0      5.80    2259.9    54%
13.1     ldg+t8                    200      0      6.40    2048.0    49%
13.1     ldg+t10                   250      0      6.20    2114.1    51%
13.1     ldg+k8                    200      0      6.00    2184.5    53%
26.2     ldg                       240      0      8.40    3120.8    75%
26.2     ldg+c8                    200      0      9.20    2849.4    68%
26.2     ldg+k10                   250      0      9.60    2730.7    66%
99.9     ldg                       264      0      1.00   99900.0   99%
"""
DECODE = """auto bs1 h25 d64 ctx2048 planned(10) 7.9 us (40%) | 1:21.8 2:9.9  best 8:7.9 us (40%)
auto bs1 h25 d64 ctx4096 planned(10) 11.7 us (54%) | 1:40.4  best 8:11.7 us (54%)
bs1 h25 d64 ctx2048 splits 3: max abs error 0.001 vs the fp32 reference
"""


def _load():
    spec = importlib.util.spec_from_file_location("decode_floor_rows", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_floor_is_the_fastest_row_of_its_engine():
    mod = _load()
    floors = mod.parse_read_paths(READ_PATHS)
    c2048 = "decode/bs1/h25/d64/ctx2048/fp16"
    assert floors[(c2048, "read-no-merge")] == (5.10, "ldg, 240 blocks")  # cpasync's faster row is no floor engine
    assert floors[(c2048, "read-ticket-merge")] == (6.20, "ldg+t10, 250 blocks")  # t8 and t10: one engine
    assert floors[(c2048, "read-combine-kernel")][0] == 6.00
    assert floors[("decode/bs1/h25/d64/ctx4096/fp16", "read-combine-kernel")][0] == 9.60
    assert all(case.startswith("decode/bs1/h25/") for case, _ in floors)  # an unknown size is left out


def test_decode_rows_and_shares():
    mod = _load()
    decode = mod.parse_decode(DECODE)
    assert decode == {"decode/bs1/h25/d64/ctx2048/fp16": (7.9, 10), "decode/bs1/h25/d64/ctx4096/fp16": (11.7, 10)}
    rows = mod.build_rows(mod.parse_read_paths(READ_PATHS), decode)
    share = {(r["case"], r["engine"]): r["value"] for r in rows if r["metric"] == "share_of_copy_ceiling"}
    # 2 (K, V) * 25 heads * 2048 keys * 64 * 2 bytes in 7.9 us, over 4160 GB/s.
    assert share[("decode/bs1/h25/d64/ctx2048/fp16", "eet")] == pytest.approx(13107200 / 7.9e-6 / 4160e9)
    us = {(r["case"], r["engine"]): r["value"] for r in rows if r["metric"] == "us"}
    assert us[("decode/bs1/h25/d64/ctx4096/fp16", "read-cluster-merge")] == 9.20


def test_notes_say_where_the_target_is_below_every_merged_floor():
    mod = _load()
    rows = mod.build_rows(mod.parse_read_paths(READ_PATHS), mod.parse_decode(DECODE))
    lines = mod.notes(rows)
    ctx2048 = next(line for line in lines if "ctx2048" in line)
    ctx4096 = next(line for line in lines if "ctx4096" in line)
    assert "60% needs <= 5.25 us" in ctx2048
    assert "best merged read 54%" in ctx2048 and "below the floor of every merge measured" in ctx2048
    assert "best merged read 68%" in ctx4096 and "not ruled out" in ctx4096


def test_main_writes_the_results_file(tmp_path):
    mod = _load()
    (tmp_path / "read.log").write_text(READ_PATHS, encoding="utf-8")
    (tmp_path / "decode.log").write_text(DECODE, encoding="utf-8")
    args = ["--read-paths", str(tmp_path / "read.log"), "--decode", str(tmp_path / "decode.log")]
    assert mod.main([*args, "--results-dir", str(tmp_path / "out"), "--command", "the probe"]) == 0
    (json_path,) = (tmp_path / "out").glob("decode-floor-*.json")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["meta"]["command"] == "the probe"
    assert {r["engine"] for r in data["rows"]} == {
        "eet",
        "read-no-merge",
        "read-cluster-merge",
        "read-ticket-merge",
        "read-combine-kernel",
    }
    md = json_path.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Notes" in md and "below the floor of every merge measured" in md


def test_main_refuses_logs_it_cannot_read(tmp_path):
    mod = _load()
    (tmp_path / "read.log").write_text("nothing here\n", encoding="utf-8")
    (tmp_path / "decode.log").write_text(DECODE, encoding="utf-8")
    with pytest.raises(SystemExit, match="nothing parsed"):
        mod.main(
            [
                "--read-paths",
                str(tmp_path / "read.log"),
                "--decode",
                str(tmp_path / "decode.log"),
                "--results-dir",
                str(tmp_path / "out"),
                "--command",
                "x",
            ]
        )
