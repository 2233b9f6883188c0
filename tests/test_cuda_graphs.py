"""Every CUDA graph eet captures goes through eet_hf/cuda_graphs.py, so all of them warm up and capture on its one
side stream per device (a fresh stream per capture left a cuBLAS workspace behind each time; the GPU side is
tests/gpu/test_cuda_graphs_cuda.py)."""

from __future__ import annotations

import re
from pathlib import Path

import eet_hf

PACKAGE = Path(eet_hf.__file__).parent
# A capture or a stream made anywhere else in the package would bypass the shared stream.
BYPASSES = re.compile(r"torch\.cuda\.graph\(|torch\.cuda\.Stream\(|\.capture_begin\(|make_graphed_callables")


def test_only_cuda_graphs_py_captures_or_makes_streams():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cuda_graphs.py" and path.parent == PACKAGE:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if BYPASSES.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "capture through eet_hf.cuda_graphs.warm_up_and_capture:\n" + "\n".join(offenders)

