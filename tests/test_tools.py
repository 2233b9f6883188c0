"""The maintained tools in tools/ answer --help (which imports everything they need) and refuse bad input clearly, so
a tool whose imports or arguments broke fails CI. Their real runs need a GPU (profile_steps), the network
(gpu_wheels) or twelve CPU minutes (train_tiny_models); readme_tables runs for real in tests/test_readme.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"

HELP = {
    "train_tiny_models.py": [sys.executable, str(TOOLS / "train_tiny_models.py"), "--help"],
    "profile_steps.py": [sys.executable, str(TOOLS / "profile_steps.py"), "--help"],
    "gpu_wheels.sh": ["bash", str(TOOLS / "gpu_wheels.sh"), "--help"],
    "readme_tables.py": [sys.executable, str(TOOLS / "readme_tables.py"), "--help"],
    "ttft_anatomy.py": [sys.executable, str(TOOLS / "ttft_anatomy.py"), "--help"],
    "decode_linear_splits.py": [sys.executable, str(TOOLS / "decode_linear_splits.py"), "--help"],
    "decode_linear_fit.py": [sys.executable, str(TOOLS / "decode_linear_fit.py"), "--help"],
    "ab_trees.sh": ["bash", str(TOOLS / "ab_trees.sh"), "--help"],
}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)


def test_every_tool_has_a_help_check():
    """A tool added to tools/ needs its line in HELP (tools/hf_suites/ is another package with its own tests)."""
    tools = {p.name for p in TOOLS.iterdir() if p.is_file() and p.suffix in (".py", ".sh")}
    assert tools == set(HELP), f"tools without a --help check: {sorted(tools - set(HELP))}"


@pytest.mark.parametrize("tool", sorted(HELP))
def test_tool_help(tool):
    result = _run(HELP[tool])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower(), result.stdout[:500]


def test_profile_steps_names_an_unknown_probe():
    result = _run([sys.executable, str(TOOLS / "profile_steps.py"), "--probes", "gpt2,nope"])
    assert result.returncode == 2 and "unknown probes nope" in result.stderr, result.stderr[-1000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_profile_steps_without_cuda_says_so():
    result = _run([sys.executable, str(TOOLS / "profile_steps.py"), "--probes", "gpt2"])
    assert result.returncode == 2 and "CUDA GPU" in result.stderr, result.stderr[-1000:]


def test_ttft_anatomy_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the tool would run")
    done = _run([sys.executable, str(TOOLS / "ttft_anatomy.py")])
    assert done.returncode != 0 and "needs a CUDA GPU" in done.stderr


def test_decode_linear_fit_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the tool would run")
    done = _run([sys.executable, str(TOOLS / "decode_linear_fit.py")])
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr, done.stderr[-1000:]


def test_ab_trees_prepare_puts_a_revisions_code_beside_the_tree():
    """`prepare` archives a revision's code into .ab/NAME without the results and the embedded weights (the device
    tool carries at most 64 MiB), and refuses a name that cannot name an environment variable."""
    name = "test_prepare"
    dest = REPO / ".ab" / name
    try:
        done = _run(["bash", str(TOOLS / "ab_trees.sh"), "prepare", name, "HEAD"])
        if done.returncode != 0 and "not a git repository" in done.stderr:
            pytest.skip("not a git checkout")
        assert done.returncode == 0, done.stderr[-1000:]
        assert (dest / "csrc" / "decode_linear.cu").is_file() and (dest / "eet_hf" / "ops" / "decode.py").is_file()
        assert not (dest / "evaluation" / "results").exists()
        assert not list((dest / "eet_hf" / "models").glob("*-tiny"))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    bad = _run(["bash", str(TOOLS / "ab_trees.sh"), "prepare", "a-b", "HEAD"])
    assert bad.returncode == 2 and "NAME" in bad.stderr
