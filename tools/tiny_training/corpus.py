"""The training corpus: docstrings of this Python's standard library, re-flowed, split train/held-out."""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "lib2to3"}  # test suites are code, not prose


def collect_docstrings(min_chars: int = 40) -> list[str]:
    """Module/class/function docstrings of the stdlib .py files, in sorted-path order, de-duplicated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts))
    docs: list[str] = []
    seen: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= min_chars:
                    doc = unwrap(doc)
                    if doc not in seen:
                        seen.add(doc)
                        docs.append(doc)
    return docs


def unwrap(doc: str) -> str:
    """Re-flow hard-wrapped prose paragraphs onto one line; paragraphs with indented, bulleted or doctest
    lines (code, tables, lists) keep their line breaks. Fewer newline tokens -> more prose per token."""
    paras = []
    for para in doc.split("\n\n"):
        lines = para.split("\n")
        plain = all(
            line and not line[0].isspace() and not line.startswith((">>>", "...", "-", "*", "|", "+", ":"))
            for line in lines
        )
        paras.append(" ".join(line.strip() for line in lines) if plain else para)
    return "\n\n".join(paras)


def split(docs: list[str], heldout_share: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = int(len(docs) * heldout_share)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [docs[i] for i in train], [docs[i] for i in held]
