"""JIT build of the CUDA extension (csrc/) with torch.utils.cpp_extension.load, on first CUDA use.

The build targets only the present GPU's architecture and is cached by torch under its extensions
directory. A failed build never raises: it logs the compiler's first error and where the build directory
is, and the ops keep running their reference implementations.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import torch

logger = logging.getLogger("eet_hf")

EXTENSION_NAME = "eet_hf_kernels"
_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "tried": False, "error": None}


def csrc_dir() -> Path:
    """csrc/ inside an installed package, or beside eet_hf/ in a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"eet_hf: csrc/ with bindings.cpp not found beside {here}")


def sources() -> list[Path]:
    """Every translation unit in csrc/: the kernel files (*.cu) and the torch bindings (bindings*.cpp)."""
    root = csrc_dir()
    return sorted(root.glob("*.cu")) + sorted(root.glob("*.cpp"))


def build_directory() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(EXTENSION_NAME, verbose=False))


def disabled_reason() -> str | None:
    if os.environ.get("EET_HF_DISABLE_CUDA", "") not in ("", "0"):
        return "EET_HF_DISABLE_CUDA is set"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.version.cuda is None:
        return "this torch build has no CUDA"
    return None


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE):
            return line.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown error"


def ensure_loaded() -> bool:
    """Build (first time) and load the CUDA kernels; True when they serve the eet ops on CUDA."""
    if _state["loaded"] or _state["tried"]:
        return bool(_state["loaded"])
    with _lock:
        if _state["tried"]:
            return bool(_state["loaded"])
        _state["tried"] = True
        reason = disabled_reason()
        if reason is not None:
            _state["error"] = reason
            return False
        _state["loaded"] = _build_and_load()
    return bool(_state["loaded"])


def _build_and_load() -> bool:
    from torch.utils import cpp_extension

    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(max(1, min(16, os.cpu_count() or 1))))
    build_dir = build_directory()
    logger.warning(
        "eet_hf: building CUDA kernels for sm_%d%d (first use takes a minute or two; cached afterwards) in %s",
        major, minor, build_dir,
    )
    started = time.perf_counter()
    try:
        cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(s) for s in sources()],
            # No -std flag: cpp_extension passes the standard torch itself was built with. Forcing c++17 against
            # torch 2.11's headers built, ran, and crashed the process whenever an op threw (TORCH_CHECK).
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo", "--expt-relaxed-constexpr"],
            is_python_module=False,
            verbose=os.environ.get("EET_HF_VERBOSE_BUILD", "") not in ("", "0"),
        )
    except Exception as exc:  # noqa: BLE001 - any build failure means: reference path, with the reason logged
        _state["error"] = _first_error(str(exc))
        logger.error(
            "eet_hf: CUDA build failed, using reference (PyTorch) ops. First error: %s\n"
            "Build directory: %s (delete it, and its 'lock' file if a build hangs, to retry).",
            _state["error"], build_dir,
        )
        return False
    logger.warning("eet_hf: CUDA kernels ready (%.1f s)", time.perf_counter() - started)
    return True


def build_info() -> dict[str, object]:
    """What `eet-hf info` shows about the extension."""
    try:
        build_dir = build_directory()
        cached = any(build_dir.glob(f"{EXTENSION_NAME}*.so"))
    except Exception:  # noqa: BLE001 - informational only
        build_dir, cached = None, False
    return {
        "loaded": bool(_state["loaded"]),
        "error": _state["error"],
        "build_directory": str(build_dir) if build_dir else None,
        "cached_build": cached,
        "disabled_reason": disabled_reason(),
    }
