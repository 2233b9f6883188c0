"""Version gates, evaluated once at import."""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version

MIN_TRANSFORMERS = Version("5.17.0")
MIN_TORCH = Version("2.5.0")


def check_versions() -> None:
    tf, th = Version(transformers.__version__), Version(torch.__version__.split("+")[0])
    if tf < MIN_TRANSFORMERS:
        raise ImportError(f"eet_hf needs transformers >= {MIN_TRANSFORMERS}, found {transformers.__version__}")
    if th < MIN_TORCH:
        raise ImportError(f"eet_hf needs torch >= {MIN_TORCH}, found {torch.__version__}")
