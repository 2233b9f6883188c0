"""The `eet-hf` command line: answers `--help` without importing torch, turns bad input into one line and a non-zero
exit (no traceback), and says on CPU that the demo shows parity, not speed. The demo and `info` themselves run in
tests/test_evaluation.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import eet_hf
from eet_hf import cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing this checkout's eet_hf (cwd first on sys.path)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _eet_hf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m eet_hf.cli ARGS` as a user runs it."""
    return _python(f"import runpy, sys; sys.argv = ['eet-hf', *{list(args)!r}]; "
                   "runpy.run_module('eet_hf.cli', run_name='__main__', alter_sys=True)", env)


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["--version"]])
def test_help_is_answered_before_torch_is_imported(argv):
    """Structural, not timed: `eet-hf --help` took 8-14 s because torch and transformers loaded before parsing."""
    code = (f"import sys, runpy\nsys.argv = ['eet-hf', *{argv!r}]\n"
            "try:\n    runpy.run_module('eet_hf.cli', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as stop:\n    code = stop.code\n"
            f"print('exit', code, 'heavy', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    run = _python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "exit 0 heavy []", run.stdout + run.stderr
    assert ("usage: eet-hf" in run.stdout) or (run.stdout.startswith(f"eet-hf {eet_hf.__version__}"))


def test_import_eet_hf_is_cheap_and_the_api_loads_on_use():
    run = _python("import sys, eet_hf\n"
                  f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
                  "from eet_hf import accelerate, EetUnsupportedError\n"
                  "print(callable(accelerate), callable(eet_hf.explain), callable(eet_hf.restore), "
                  "eet_hf.Report.__name__, issubclass(EetUnsupportedError, Exception))\n"
                  "print(hasattr(eet_hf, 'no_such_name'))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[]", "True True True Report True", "False"], run.stdout


def _one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("eet-hf demo: error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_demo_model_that_does_not_exist(tmp_path):
    missing = tmp_path / "nonexistent"
    _one_line_error(_eet_hf("demo", "--model", str(missing)), str(missing), "no such directory")


def test_demo_model_directory_that_is_not_a_model(tmp_path):
    assert cli.main(["demo", "--model", str(tmp_path)]) == 2  # in-process: the message, not a traceback


def test_demo_cuda_on_a_machine_without_cuda():
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this runs the same on a GPU machine.
    _one_line_error(_eet_hf("demo", "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""}),
                    "--device cuda", "no CUDA device")


def test_demo_on_cpu_says_it_shows_parity_not_speed(capsys):
    assert cli.main(["demo", "--device", "cpu", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "speed-up needs a CUDA GPU" in line]
    assert len(notes) == 1 and "reference ops" in notes[0] and "HF's answers" in notes[0], out


def test_info_prints_the_version(capsys):
    assert cli.main(["info"]) == 0
    assert f"eet_hf        {eet_hf.__version__} (" in capsys.readouterr().out
