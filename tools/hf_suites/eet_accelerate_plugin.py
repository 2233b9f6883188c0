"""pytest plugin: every top-level transformers model a test puts in eval mode goes through eet_hf.accelerate.

Load it into a run of transformers' own tests (the plugin's folder and the eet_hf checkout on PYTHONPATH):

    PYTHONPATH=/path/to/eet_hf:/path/to/eet_hf/tools/hf_suites \\
        python -m pytest -p eet_accelerate_plugin --eet-summary=out.json tests/models/gpt2/test_modeling_gpt2.py

How: `torch.nn.Module.train` is wrapped at the class level, in this test process only. `model.eval()` (also
called by `from_pretrained`) runs `train(False)` on the model and then, recursively, on each submodule; only the
outermost call accelerates, so a model's inner `PreTrainedModel`s (GPT2LMHeadModel.transformer, ...) are never
accelerated on their own. A model already accelerated is left as is. `eet_hf.explain(model).accelerated` must be
non-empty afterwards for the model to count as accelerated; models where accelerate() left everything to HF are
counted apart. An error from accelerate() propagates: the test fails with eet's error, which is a finding.

At session end the plugin writes a JSON summary (--eet-summary, or the HF_SUITES_EET_SUMMARY environment variable):
tests run, tests with at least one accelerated model, models accelerated, and per test the counts.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

_SUMMARY_ENV = "HF_SUITES_EET_SUMMARY"


class _Tally:
    """What happened in the test that is running now, and in the whole session."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.per_test: dict[str, dict[str, Any]] = {}
        self.outside_tests = {"accelerated": 0, "not_accelerated": 0, "errors": []}
        self.outcomes: dict[str, str] = {}  # nodeid -> "passed" / "failed" / "skipped"
        self.eet_hf_file = ""

    def _slot(self) -> dict[str, Any]:
        if self.current is None:
            return self.outside_tests
        return self.per_test.setdefault(self.current, {"accelerated": 0, "not_accelerated": 0, "errors": []})

    def model(self, accelerated: bool) -> None:
        self._slot()["accelerated" if accelerated else "not_accelerated"] += 1

    def error(self, message: str) -> None:
        self._slot()["errors"].append(message)


TALLY = _Tally()
_local = threading.local()  # depth of nested Module.train calls, per thread
_original_train = torch.nn.Module.train
_INNER: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # PreTrainedModels inside an accelerated model


def _is_accelerated(model: torch.nn.Module) -> bool:
    import eet_hf

    return bool(eet_hf.explain(model).accelerated)


def _accelerate_top_level(model: torch.nn.Module) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or model.training or model in _INNER or _is_accelerated(model):
        return
    import eet_hf

    try:
        eet_hf.accelerate(model)
    except Exception as exc:
        TALLY.error(f"{type(model).__name__}: {type(exc).__name__}: {exc}".splitlines()[0])
        raise
    TALLY.model(_is_accelerated(model))
    # Its inner models (GPT2LMHeadModel.transformer, ...) are parts of it: a later eval() on one alone is no new model.
    _INNER.update(m for m in model.modules() if m is not model and isinstance(m, PreTrainedModel))


def _train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        out = _original_train(self, mode)
        # Submodules' train() calls run at depth > 0; so does anything accelerate() itself puts in eval mode.
        if depth == 0 and not mode:
            _accelerate_top_level(self)
    finally:
        _local.depth = depth
    return out


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--eet-summary",
        default=os.environ.get(_SUMMARY_ENV),
        help=f"where the eet_hf acceleration summary (JSON) goes; default ${_SUMMARY_ENV}, else none",
    )


def pytest_configure(config: pytest.Config) -> None:
    import eet_hf  # fail at start, not inside the first test, when the checkout is not importable

    TALLY.eet_hf_file = eet_hf.__file__
    torch.nn.Module.train = _train


def pytest_unconfigure(config: pytest.Config) -> None:
    torch.nn.Module.train = _original_train


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    TALLY.current = item.nodeid
    try:
        yield
    finally:
        TALLY.current = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcomes = TALLY.outcomes
    # A test ran when its call phase ran; a failure in any phase makes it failed.
    if report.when == "call" or report.failed:
        if outcomes.get(report.nodeid) != "failed":
            outcomes[report.nodeid] = "failed" if report.failed else report.outcome
    elif report.skipped and report.nodeid not in outcomes:
        outcomes[report.nodeid] = "skipped"


def summarize(tally: _Tally) -> dict[str, Any]:
    """The session summary: counts over tests that ran (not skipped), and the per-test tallies."""
    outcomes, per_test = tally.outcomes, tally.per_test
    ran = [nodeid for nodeid, outcome in outcomes.items() if outcome != "skipped"]
    with_model = [nodeid for nodeid in ran if per_test.get(nodeid, {}).get("accelerated", 0) > 0]
    return {
        "eet_hf": tally.eet_hf_file,
        "tests_run": len(ran),
        "tests_with_accelerated_model": len(with_model),
        "models_accelerated": sum(t["accelerated"] for t in per_test.values()),
        "models_left_to_hf": sum(t["not_accelerated"] for t in per_test.values()),
        "accelerate_errors": sum(len(t["errors"]) for t in per_test.values()),
        "tests": {
            nodeid: {"outcome": outcome, **per_test.get(nodeid, {"accelerated": 0, "not_accelerated": 0, "errors": []})}
            for nodeid, outcome in outcomes.items()
        },
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--eet-summary")
    if not path:
        return
    summary = summarize(TALLY)
    Path(path).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    summary = summarize(TALLY)
    terminalreporter.write_sep("=", "eet_hf acceleration")
    terminalreporter.write_line(
        f"eet_hf from {summary['eet_hf']}: {summary['tests_run']} tests ran, "
        f"{summary['tests_with_accelerated_model']} with an accelerated model, "
        f"{summary['models_accelerated']} models accelerated, {summary['models_left_to_hf']} left to HF, "
        f"{summary['accelerate_errors']} accelerate() errors"
    )
