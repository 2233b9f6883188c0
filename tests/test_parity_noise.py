"""Parity's pass rules for random-weight shapes: token-choice agreement in fp16/bf16 is recorded, not judged."""

from __future__ import annotations

from evaluation import parity
from evaluation.models import full_specs, tiny_specs


def test_token_choice_is_judged_for_trained_models_and_fp32_only():
    trained, random_weights = tiny_specs()[0], full_specs()[0]
    assert parity._decisive(trained, "fp16") and parity._decisive(trained, "bf16")
    assert parity._decisive(random_weights, "fp32")
    assert not parity._decisive(random_weights, "fp16") and not parity._decisive(random_weights, "bf16")


def test_yardstick_records_without_judging_when_not_decisive():
    rows: list[dict] = []
    parity._yardstick(rows, "c", "pipeline_equal", 0.5, "fp16", 0.75)
    assert rows[0]["pass"] is False and "note" not in rows[0]
    rows.clear()
    parity._yardstick(rows, "c", "pipeline_equal", 0.5, "fp16", 0.75, decisive=False)
    assert rows[0]["pass"] is None and rows[0]["note"] == parity.NOISE_NOTE and rows[0]["value"] == 0.5
    rows.clear()
    parity._yardstick(rows, "c", "pipeline_equal", 0.5, "fp32", 1.0)
    assert rows[0]["pass"] is False  # fp32 must agree fully
