"""Makes the top-level patches/ package importable as eet_hf.patches in a source checkout.

An installed eet_hf has patches/ inside the package already (setup.py's package_dir maps it there).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PACKAGE = "eet_hf.patches"


class _SourcePatchesFinder(importlib.abc.MetaPathFinder):
    """Finds eet_hf.patches in the checkout's patches/ when it is first imported: the adapters import torch and
    transformers, which `import eet_hf` (and `eet-hf --help`) must not pay for."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE:
            return None  # submodules resolve through the package's __path__ (submodule_search_locations)
        return importlib.util.spec_from_file_location(
            PACKAGE, self.source / "__init__.py", submodule_search_locations=[str(self.source)]
        )


def expose_patches() -> None:
    package_dir = Path(__file__).resolve().parent
    if (package_dir / "patches" / "__init__.py").is_file():
        return
    if any(isinstance(finder, _SourcePatchesFinder) for finder in sys.meta_path):
        return
    source_patches = package_dir.parent / "patches"
    if not (source_patches / "__init__.py").is_file():
        raise ImportError(f"eet_hf: patches/ not found beside {package_dir}")
    sys.meta_path.insert(0, _SourcePatchesFinder(source_patches))
