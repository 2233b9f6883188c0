"""The perplexity suite's text loading: through datasets, or (datasets missing) the same text read directly."""

from __future__ import annotations

import sys

import pytest

from eet_hf.models import heldout_text_path
from evaluation import perplexity


def test_text_without_datasets_is_identical_and_labelled(monkeypatch):
    direct = "\n".join(perplexity.read_lines_like_datasets(heldout_text_path()))
    assert direct == heldout_text_path().read_text(encoding="utf-8").rstrip("\n")
    try:
        import datasets  # noqa: F401
    except ImportError:
        pass
    else:
        text, tag, loader = perplexity.load_text(None, None, "test")
        assert (text, tag, loader) == (direct, "heldout", "datasets")

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    text, tag, loader = perplexity.load_text(None, None, "test")
    assert (text, tag) == (direct, "heldout") and loader == "file (datasets missing)"
    with pytest.raises(SystemExit, match="needs the datasets package"):
        perplexity.load_text("wikitext", "wikitext-2-raw-v1", "test")
