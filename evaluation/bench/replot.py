"""Redraw a suite's PNG from its JSON, e.g. on a machine with matplotlib after a GPU run on one without:

    python -m evaluation.bench.replot evaluation/results/generate-h200.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import cli
from .output import plot


def replot(json_path: Path) -> Path | None:
    """The suite is the file name without its last '-<device>' part."""
    suite, device = json_path.stem.rsplit("-", 1)
    if suite not in cli.SUITES:
        raise SystemExit(f"{json_path.name}: unknown suite {suite!r}; known: {', '.join(cli.SUITES)}")
    module = cli.SUITES[suite]
    rows = json.loads(json_path.read_text(encoding="utf-8"))["rows"]
    return plot(rows, module.HEADLINE, json_path.with_suffix(".png"), f"{suite} ({device})", module.LOG_METRICS)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(replot(Path(arg)))
