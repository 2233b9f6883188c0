"""README.md stays true: its quickstart runs, its generated tables equal what the code and the committed results say,
its headline numbers are the table's, and every relative link in it and in docs/ points at a file that exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RUNNABLE = "<!-- readme-test: runs on CPU -->"


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "tools" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runnable_blocks(text: str) -> list[str]:
    """The python blocks right after a RUNNABLE marker."""
    return re.findall(re.escape(RUNNABLE) + r"\n```python\n(.*?)\n```", text, re.S)


def test_runnable_blocks_are_found():
    assert runnable_blocks(f"x\n{RUNNABLE}\n```python\nprint(1)\n```\n```python\nprint(2)\n```") == ["print(1)"]
    assert len(runnable_blocks(README.read_text())) >= 1, f"README.md has no block marked {RUNNABLE!r}"


@pytest.mark.parametrize("block", range(len(runnable_blocks(README.read_text()))))
def test_quickstart_runs_on_cpu(block, tmp_path):
    """A new user's copy-paste: a fresh interpreter, the checkout's eet_hf, CPU only, no network."""
    code = runnable_blocks(README.read_text())[block]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"README block {block} failed:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("name", ["support", "results"])
def test_generated_table_matches(name):
    """The README's table equals what tools/readme_tables.py builds now (explain() on tiny models / the results
    JSON). On a failure: python tools/readme_tables.py --write, then read the diff."""
    tables = _tables_module()
    assert tables.readme_table(name) == tables.TABLES[name](), (
        f"README.md's {name} table is stale: run `python tools/readme_tables.py --write` and review the diff")


def test_headline_is_the_tables():
    """The two-sentence summary quotes the GPT-2 batch-1 row's ratios and the BERT random-length rows' range."""
    tables = _tables_module()
    rows = {row.split(" | ")[0].strip("| "): row.split(" | ") for row in tables.results_table().splitlines()[2:]
            if row.startswith("|")}
    gpt2 = rows["GPT-2, batch 1"]
    vs_sdpa, vs_best = float(gpt2[5].rstrip("x")), float(gpt2[6].rstrip("x |"))
    bert = sorted(float(rows[k][6].rstrip("x |")) for k in rows if "random lengths" in k)
    head = README.read_text().split("## Install")[0]
    assert f"{vs_best:.1f}× faster per token than HF's fastest path" in head, head
    assert f"{vs_sdpa:.1f}× faster than HF's default" in head, head
    assert f"{bert[0]:.1f}-{bert[-1]:.1f}× faster than `torch.compile`" in head, head


def test_write_replaces_only_the_marked_tables():
    tables = _tables_module()
    text = README.read_text()
    new = tables.write(text, {"support": "| a |", "results": "| b |"})
    assert tables.readme_table("support", new) == "| a |" and tables.readme_table("results", new) == "| b |"
    assert tables.write(new, {"support": tables.readme_table("support"), "results": tables.readme_table("results")}) \
        == text


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m) and not m.startswith("#")]


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))])
def test_relative_links_exist(doc):
    path = REPO / doc
    missing = [link for link in _links(path) if not (path.parent / link.split("#")[0]).exists()]
    assert not missing, f"{doc} links to files that do not exist: {missing}"
