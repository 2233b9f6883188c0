"""Makes the top-level patches/ package importable as eet_hf.patches in a source checkout.

An installed eet_hf has patches/ inside the package already (setup.py's package_dir maps it there).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def expose_patches() -> None:
    package_dir = Path(__file__).resolve().parent
    if (package_dir / "patches" / "__init__.py").is_file() or "eet_hf.patches" in sys.modules:
        return
    source_patches = package_dir.parent / "patches"
    spec = importlib.util.spec_from_file_location(
        "eet_hf.patches", source_patches / "__init__.py", submodule_search_locations=[str(source_patches)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"eet_hf: patches/ not found beside {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["eet_hf.patches"] = module
    spec.loader.exec_module(module)
