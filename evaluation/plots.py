"""PNG charts of result rows (matplotlib is optional: without it the PNG is skipped with a message)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on CI / GPU hosts
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def bar_chart(
    rows: list[dict], metrics: list[str], path: Path, title: str, log_metrics: tuple[str, ...] = ()
) -> Path | None:
    """One panel per metric: grouped bars (case on x, one bar per engine). Returns the PNG path, or None
    when matplotlib is missing. Non-finite or non-numeric values are left out."""
    plt = _pyplot()
    if plt is None:
        print(f"matplotlib is not installed: skipping {path.name} (pip install matplotlib to get it)")
        return None
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, len(rows) * 0.25), 3.2 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        picked = [r for r in rows if r["metric"] == metric and isinstance(r["value"], (int, float))]
        cases = sorted({r["case"] for r in picked}, key=[r["case"] for r in picked].index)
        engines = sorted({r["engine"] for r in picked})
        width = 0.8 / max(1, len(engines))
        for i, engine in enumerate(engines):
            values = {r["case"]: float(r["value"]) for r in picked if r["engine"] == engine}
            xs = [j + i * width for j, c in enumerate(cases) if c in values]
            ys = [values[c] for c in cases if c in values]
            if metric in log_metrics:
                ys = [max(y, 1e-12) for y in ys]  # log axis: exact zeros drawn at the floor
            ax.bar(xs, ys, width=width, label=engine)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
        ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        if metric in log_metrics:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
