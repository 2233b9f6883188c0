"""tools/hf_suites: the pytest plugin that accelerates every model a test puts in eval mode, and run.py around it.

The end-to-end test runs run.py on a fake transformers tests folder (a conftest and one tiny GPT-2 test file), so it
checks the plugin (top-level models only, counted once, confirmed by explain()), the plain/accelerated join and the
results file, without transformers' own tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "hf_suites"
sys.path.insert(0, str(TOOL))

import compare  # noqa: E402  (tools/hf_suites is not a package)

FAKE_TESTS = """
import unittest

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def tiny():
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    return GPT2LMHeadModel(config)


class FakeModelTest(unittest.TestCase):
    def test_eval_accelerates_top_level_once(self):
        model = tiny().eval()
        model.train()
        model.eval()  # already accelerated: not again
        out = model(torch.tensor([[1, 2, 3]])).logits
        self.assertEqual(out.shape, (1, 3, 50))

    def test_two_models(self):
        tiny().eval()
        tiny().eval()

    def test_no_eval(self):
        tiny()(torch.tensor([[1, 2]]))

    def test_submodule_is_not_accelerated_alone(self):
        model = tiny().eval()
        inner = model.transformer
        inner.eval()  # part of an accelerated model: the plugin accelerates top-level models only
        self.assertIsNot(inner, model)

    def test_inspects_attention(self):
        model = tiny().eval()
        # The attention module's config: acceleration gives the modules a view naming eet's attention.
        self.assertEqual(model.transformer.h[0].attn.config._attn_implementation, "sdpa")

    @unittest.skip("never runs")
    def test_skipped(self):
        pass
"""


def test_help_is_quick_and_names_the_options():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(TOOL / "run.py"), "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - start < 10  # argparse only: torch and transformers are imported after parsing
    for option in ("--tests-dir", "--families", "-k", "--max-tests", "--eet-src", "--reuse-plain"):
        assert option in out.stdout


def test_unknown_argument_is_refused():
    out = subprocess.run(
        [sys.executable, str(TOOL / "run.py"), "--tests-dir", ".", "--bogus"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--bogus" in out.stderr


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hf_suites")
    tests_dir = root / "transformers"
    (tests_dir / "tests" / "models" / "fake").mkdir(parents=True)
    (tests_dir / "conftest.py").write_text("")
    (tests_dir / "tests" / "test_modeling_common.py").write_text("")
    (tests_dir / "tests" / "models" / "fake" / "test_modeling_fake.py").write_text(textwrap.dedent(FAKE_TESTS))
    work, results = root / "work", root / "results"
    cmd = [sys.executable, str(TOOL / "run.py"), "--tests-dir", str(tests_dir), "--families", "fake",
           "--work-dir", str(work), "--results-dir", str(results)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, json.loads(next(results.glob("hf-suites-*.json")).read_text())


def test_plugin_counts_top_level_models_once(fake_run):
    work, _ = fake_run
    summary = json.loads((work / "fake-eet.json").read_text())
    assert Path(summary["eet_hf"]).resolve().is_relative_to(REPO)  # this checkout's eet_hf, not an installed one
    tests = {k.split("::")[-1]: v for k, v in summary["tests"].items()}
    assert tests["test_eval_accelerates_top_level_once"]["accelerated"] == 1
    assert tests["test_two_models"]["accelerated"] == 2
    assert tests["test_no_eval"]["accelerated"] == 0
    assert tests["test_submodule_is_not_accelerated_alone"]["accelerated"] == 1
    assert tests["test_skipped"] == {"outcome": "skipped", "accelerated": 0, "not_accelerated": 0, "errors": []}
    assert (summary["tests_run"], summary["tests_with_accelerated_model"], summary["models_accelerated"]) == (5, 4, 5)


def test_results_list_what_acceleration_broke(fake_run):
    _, results = fake_run
    assert {"torch", "transformers", "date", "command"} <= set(results["meta"])
    assert "eet_hf commit" in results["meta"]["command"]
    value = {(r["case"], r["engine"], r["metric"]): r["value"] for r in results["rows"]}
    assert value[("fake", "hf-sdpa", "tests_ran")] == 5 and value[("fake", "hf-sdpa", "passed")] == 5
    assert value[("fake", "eet", "passed")] == 4 and value[("fake", "eet", "models_accelerated")] == 5
    assert value[("all", "eet", "plain_pass_accel_fail")] == 1
    (broken,) = [r for r in results["rows"] if r["metric"] == "plain_pass_accel_fail" and "/" in r["case"]]
    assert broken["case"] == "fake/FakeModelTest::test_inspects_attention"
    assert broken["category"] == "tests inspecting internals" and "eet" in broken["error"]
    assert broken["where"] == 'self.assertEqual(model.transformer.h[0].attn.config._attn_implementation, "sdpa")'


def test_report_only_rebuilds_the_same_rows(fake_run, tmp_path):
    work, results = fake_run
    tests_dir = work.parent / "transformers"
    cmd = [sys.executable, str(TOOL / "run.py"), "--tests-dir", str(tests_dir), "--families", "fake",
           "--work-dir", str(work), "--results-dir", str(tmp_path), "--report-only"]  # fmt: skip
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    again = json.loads(next(tmp_path.glob("hf-suites-*.json")).read_text())
    assert again["rows"] == results["rows"] and "--report-only" in again["meta"]["command"]


def test_junit_teardown_error_counts_as_failed(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.models.x.test_modeling_x.XTest" name="test_a"/>'
        '<testcase classname="tests.models.x.test_modeling_x.XTest" name="test_a">'
        '<error message="failed on teardown with &quot;boom&quot;&#10;more">trace</error></testcase>'
        '<testcase classname="tests.models.x.test_modeling_x" name="test_fn"><skipped message="no GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    out = compare.read_junit(xml)
    assert out["XTest::test_a"] == compare.Outcome("failed", 'failed on teardown with "boom"', "")
    assert out["test_fn"] == compare.Outcome("skipped", "no GPU")


@pytest.mark.parametrize(
    "test, error, category",
    [
        ("XTest::test_generate_with_static_cache", "AttributeError: 'SeqBounds' object has no attribute 'ndim'",
         "static/compiled generate"),
        ("XTest::test_assisted_decoding_matches_greedy_search_0_random", "IndexError: tuple index out of range",
         "attention weights lost / assisted decoding"),
        ("XTest::test_sdpa_can_dispatch", "AssertionError: 'eet' != 'sdpa'", "tests inspecting internals"),
        ("XTest::test_torch_compile_fullgraph", "torch._dynamo.exc.Unsupported: Logger not supported",
         "logging under fullgraph compile"),
        ("XTest::test_attention_outputs", "AssertionError: 0 != 2", "attention weights lost / assisted decoding"),
        ("XTest::test_something_new", "RuntimeError: boom", "other"),
    ],
)  # fmt: skip
def test_categories(test, error, category):
    assert compare.categorize(test, error) == category


def test_a_skip_only_accelerated_is_a_skip_difference():
    assert compare.categorize("XTest::test_attention_outputs", "not supported", skipped=True) == compare.SKIP_CATEGORY


def test_failing_statement_is_the_deepest_marked_line():
    traceback = ">   model.generate(x)\n\nutils.py:10: in generate\n>       if mask.ndim < 4:\nE   AttributeError"
    assert compare.failing_statement(traceback) == "if mask.ndim < 4:"
