"""eet_hf: a drop-in accelerator for Hugging Face transformers, after EET (arXiv 2104.12470).

    import eet_hf
    eet_hf.accelerate(model)   # same object, rewired in place
    print(eet_hf.explain(model))
    eet_hf.restore(model)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._layout import expose_patches

# The one version string: setup.py reads this line as text, `eet-hf info` prints it.
__version__ = "0.1.0"
__all__ = ["EetUnsupportedError", "Report", "__version__", "accelerate", "explain", "restore"]

# The public names load on first use: they import torch and transformers (seconds), which `eet-hf --help` and
# `eet_hf.__version__` do not need. `from eet_hf import accelerate` and `eet_hf.accelerate` both go through
# __getattr__ below.
_PUBLIC = {"accelerate": "api", "explain": "api", "restore": "api", "EetUnsupportedError": "errors",
           "Report": "report"}

expose_patches()  # cheap: makes the top-level patches/ importable as eet_hf.patches in a source checkout

if TYPE_CHECKING:
    from .api import accelerate, explain, restore
    from .errors import EetUnsupportedError
    from .report import Report


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'eet_hf' has no attribute {name!r}")
    from ._versions import check_versions

    check_versions()  # before any eet code touches transformers: a clear message for versions out of range
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
