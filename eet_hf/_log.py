"""eet_hf's logger and once-only warnings (a fallback is reported once per process, not per call)."""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger("eet_hf")


def warn_once(message: str) -> None:
    """Log `message` once per process. Skipped while torch.compile traces: dynamo refuses logging calls (and the
    cache around them) under fullgraph=True, and the same fallback is logged by the first uncompiled call."""
    if torch.compiler.is_compiling():
        return
    _warn(message)


@functools.cache
def _warn(message: str) -> None:
    logger.warning("eet_hf: %s", message)
