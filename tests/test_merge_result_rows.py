"""scripts/merge_result_rows.py: re-measured rows of one case family replace the old ones in place, the rest of the
results file and its markdown notes stay, and the command says where the new rows came from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "merge_result_rows.py"


def _load():
    spec = importlib.util.spec_from_file_location("merge_result_rows", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(case, engine, value):
    return {"case": case, "engine": engine, "metric": "ms", "value": value, "unit": "ms"}


def test_merge_replaces_the_family_in_place_and_keeps_notes(tmp_path):
    mod = _load()
    results = {
        "meta": {"gpu": "NVIDIA H200", "command": "first run"},
        "rows": [
            _row("layer_norm/a", "eet", 1.0),
            _row("decode/x", "eet", 2.0),
            _row("decode/x", "torch-sdpa-cudnn", 3.0),
            _row("prefill/y", "eet", 4.0),
        ],
    }
    path = tmp_path / "kernels-h200.json"
    path.write_text(json.dumps(results))
    (tmp_path / "kernels-h200.md").write_text("# kernels on NVIDIA H200\n\nold table\n\n## Notes\n\n- kept note\n")
    new = tmp_path / "decode.json"
    new.write_text(json.dumps([_row("decode/x", "eet", 1.5), _row("decode/z", "eet", 5.0), _row("other/q", "eet", 9.0)]))

    assert mod.main([str(path), str(new), "--prefix", "decode/", "--command-note", "decode rows: call 1"]) == 0

    merged = json.loads(path.read_text())
    assert [(r["case"], r["engine"], r["value"]) for r in merged["rows"]] == [
        ("layer_norm/a", "eet", 1.0),
        ("decode/x", "eet", 1.5),
        ("decode/z", "eet", 5.0),
        ("prefill/y", "eet", 4.0),
    ]
    assert merged["meta"]["command"] == "first run ; decode rows: call 1"
    md = (tmp_path / "kernels-h200.md").read_text()
    assert md.startswith("# kernels on NVIDIA H200\n")
    assert "old table" not in md and "| decode/z | eet | ms | 5 | ms |" in md
    assert md.rstrip().endswith("## Notes\n\n- kept note")


def test_merge_refuses_a_file_without_the_family(tmp_path):
    mod = _load()
    path = tmp_path / "kernels-h200.json"
    path.write_text(json.dumps({"meta": {"command": "c"}, "rows": [_row("decode/x", "eet", 2.0)]}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"rows": [_row("prefill/y", "eet", 1.0)]}))
    with pytest.raises(SystemExit, match="decode/"):
        mod.main([str(path), str(new), "--prefix", "decode/", "--command-note", "n"])
    assert json.loads(path.read_text())["rows"] == [_row("decode/x", "eet", 2.0)]  # left as it was
