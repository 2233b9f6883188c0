"""eet_hf: a drop-in accelerator for Hugging Face transformers, after EET (arXiv 2104.12470).

    import eet_hf
    eet_hf.accelerate(model)   # same object, rewired in place
    print(eet_hf.explain(model))
    eet_hf.restore(model)
"""

from ._layout import expose_patches
from ._versions import check_versions

check_versions()
expose_patches()

from .api import accelerate, explain, restore  # noqa: E402  (needs eet_hf.patches importable first)
from .errors import EetUnsupportedError  # noqa: E402
from .report import Report  # noqa: E402

__version__ = "0.1.0"
__all__ = ["EetUnsupportedError", "Report", "__version__", "accelerate", "explain", "restore"]
