"""eet_hf's logger and once-only warnings (a fallback is reported once per process, not per call)."""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger("eet_hf")


@functools.cache
def warn_once(message: str) -> None:
    logger.warning("eet_hf: %s", message)
