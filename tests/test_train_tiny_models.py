"""tools/train_tiny_models.py --only: a partial run adds its family to the kept models' report and refuses what
would make the folder's models come from different recipes or splits (no training here: the report logic only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eet_hf.models import heldout_text_path

SCRIPTS = Path(__file__).resolve().parents[1] / "tools"
MODELS = heldout_text_path().parent


@pytest.fixture
def train(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import train_tiny_models

    return train_tiny_models


@pytest.fixture
def out(tmp_path):
    shutil.copy(MODELS / "training_report.json", tmp_path)
    shutil.copy(MODELS / "heldout.txt", tmp_path)
    return tmp_path


def test_partial_run_keeps_the_other_families(train, out):
    kept = json.loads((out / "training_report.json").read_text())
    args = train.parse_args(["--out", str(out), "--only", "llama", "--threads", "1", "--llama-steps", "7"])
    report = train.base_report(args, partial=True)
    assert report["gpt2"] == kept["gpt2"] and report["bert"] == kept["bert"]
    assert report["args"]["llama_steps"] == "7"
    # Where and how fast the kept models were trained is theirs: a partial run records its threads per run.
    assert report["args"]["out"] == kept["args"]["out"] and report["args"]["threads"] == kept["args"]["threads"]


def test_partial_run_refuses_another_recipe_or_split(train, out):
    args = train.parse_args(["--out", str(out), "--only", "llama", "--seed", "7"])
    with pytest.raises(SystemExit, match="seed"):
        train.base_report(args, partial=True)
    (out / "training_report.json").unlink()
    with pytest.raises(SystemExit, match="training_report.json is missing"):
        train.base_report(train.parse_args(["--out", str(out), "--only", "llama"]), partial=True)

    held = heldout_text_path().read_text(encoding="utf-8").rstrip("\n").split("\n\n")
    train.write_heldout(held, out / "heldout.txt", partial=True)  # the same split: accepted, file unchanged
    assert (out / "heldout.txt").read_bytes() == heldout_text_path().read_bytes()
    with pytest.raises(SystemExit, match="differs"):
        train.write_heldout(held[1:], out / "heldout.txt", partial=True)
