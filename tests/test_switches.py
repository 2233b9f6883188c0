"""Environment switches: the library (eet_hf/, patches/, csrc/) reads only the EET_HF_* variables README.md's
Configuration section lists, every listed one is read, and no script or test sets one that nothing reads (a
leftover that would force nothing)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()  # its own examples are not uses
LIBRARY = ("eet_hf", "patches", "csrc")
USERS = ("tests", "evaluation", "tools", ".ci")
SOURCES = {".py", ".cu", ".cuh", ".h", ".cpp", ".sh"}
# A variable name right after an opening quote: os.environ.get("EET_HF_X"), std::getenv("EET_HF_X"),
# monkeypatch.setenv("EET_HF_X", ...), f"EET_HF_X={value}" in a message about it. Names in comments and docstrings
# (not quoted on their own) are prose, not reads.
QUOTED = re.compile(r"""["'](EET_HF_[A-Z0-9_]+)""")
# Shell: VAR=value assignments and $VAR / ${VAR} reads.
SHELL = re.compile(r"""(?:\b|\$\{?)(EET_HF_[A-Z0-9_]+)(?:=|\}|\b)""")


def readme_switches(text: str | None = None) -> set[str]:
    """The EET_HF_* names in README.md's "## Configuration" section."""
    text = (REPO / "README.md").read_text() if text is None else text
    match = re.search(r"^## Configuration\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Configuration' section"
    return set(re.findall(r"`(EET_HF_[A-Z0-9_]+)", match.group(1)))


def _files(roots: tuple[str, ...]):
    for root in roots:
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix in SOURCES and path.is_file() and "__pycache__" not in path.parts and path != SELF:
                yield path


def read_by(roots: tuple[str, ...]) -> dict[str, list[str]]:
    """EET_HF_* name -> the files under roots that name it as a variable (quoted, or in shell code)."""
    found: dict[str, list[str]] = {}
    for path in _files(roots):
        text = path.read_text(errors="replace")
        pattern = SHELL if path.suffix == ".sh" else QUOTED
        if path.suffix == ".sh":  # shell comments are prose
            text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        for name in set(pattern.findall(text)):
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


def test_the_scanners_see_reads_and_skip_prose():
    assert QUOTED.findall('os.environ.get("EET_HF_A", "") and getenv("EET_HF_B") # EET_HF_C in a comment') == [
        "EET_HF_A", "EET_HF_B"]
    assert set(SHELL.findall("env EET_HF_A=1 cmd ${EET_HF_B:-x} $EET_HF_C")) == {"EET_HF_A", "EET_HF_B", "EET_HF_C"}
    assert readme_switches("## Configuration\n| `EET_HF_X=1` | y |\n## Next\n`EET_HF_Z`") == {"EET_HF_X"}


def test_library_reads_only_switches_the_readme_lists():
    unlisted = {name: files for name, files in read_by(LIBRARY).items() if name not in readme_switches()}
    assert not unlisted, (
        "the library reads EET_HF_* variables README.md's Configuration section does not list: a user switch goes "
        f"into that table; an experiment or tuning knob goes (winner in code, loser deleted): {unlisted}")


def test_every_listed_switch_is_read():
    stale = readme_switches() - set(read_by(LIBRARY))
    assert not stale, f"README.md lists EET_HF_* switches the library no longer reads: {sorted(stale)}"


def test_scripts_and_tests_set_no_dead_switch():
    dead = {name: files for name, files in read_by(USERS).items() if name not in read_by(LIBRARY)}
    assert not dead, f"tests / scripts set EET_HF_* variables the library does not read (they force nothing): {dead}"
