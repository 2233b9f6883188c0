"""What `pip install .` puts in the wheel: setup.py must name every package and data file of the source tree.

An editable install and the test suite import the checkout, so a package missing from setup.py went unseen
(issue 30: `eet_hf.engine` and `eet_hf.encoder` were left out and `import eet_hf` failed after `pip install .`).
.ci/wheel_smoke.sh builds and installs the real wheel; these checks say which file is missing, in seconds.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parent.parent
# Source directories that become the installed eet_hf package (setup.py's package_dir maps the last two into it).
SOURCE_TREES = ("eet_hf", "patches", "csrc")


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup, read without building anything."""
    captured: dict = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


def _source_dir(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools reads `package` from: the longest package_dir prefix, then the rest of the dotted name."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[cut:])
    return ROOT / Path(*parts)


def _files(tree: str) -> list[Path]:
    return [p for p in (ROOT / tree).rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_every_python_file_is_in_a_listed_package(setup_kwargs):
    listed = {_source_dir(p, setup_kwargs.get("package_dir", {})): p for p in setup_kwargs["packages"]}
    missing = sorted({str(f.parent.relative_to(ROOT)) for tree in SOURCE_TREES for f in _files(tree)
                      if f.suffix == ".py" and f.parent not in listed})
    assert not missing, f"setup.py's packages leave out these source directories (not in the wheel): {missing}"


def test_every_other_file_is_package_data(setup_kwargs):
    """Kernel sources (the JIT build reads them from the installed package) and the embedded models."""
    package_dir = setup_kwargs.get("package_dir", {})
    shipped: set[Path] = set()
    for package, patterns in setup_kwargs.get("package_data", {}).items():
        base = _source_dir(package, package_dir)
        shipped.update(f for pattern in patterns for f in base.glob(pattern) if f.is_file())
    missing = sorted(str(f.relative_to(ROOT)) for tree in SOURCE_TREES for f in _files(tree)
                     if f.suffix not in (".py", ".pyc") and f not in shipped)
    assert not missing, f"setup.py's package_data leaves out these files (not in the wheel): {missing}"


def test_csrc_and_patches_install_inside_the_package(setup_kwargs):
    assert {"eet_hf.patches", "eet_hf.csrc"} <= set(setup_kwargs["packages"])
    assert setup_kwargs["package_dir"]["eet_hf.patches"] == "patches"
    assert setup_kwargs["package_dir"]["eet_hf.csrc"] == "csrc"


def test_version_has_one_source(setup_kwargs):
    """setup.py's version is eet_hf.__version__ (which `eet-hf info` prints), not a second literal."""
    import eet_hf

    assert setup_kwargs["version"] == eet_hf.__version__
    assert eet_hf.__version__ not in (ROOT / "setup.py").read_text()


def test_license_metadata(setup_kwargs):
    assert setup_kwargs.get("license_expression") == "Apache-2.0"
    assert setup_kwargs.get("license_files") == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
