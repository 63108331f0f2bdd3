"""acc_test, pp and f per phase (and acc_shift on a sub-population-shift stream): a line per
method with its 95% band across order seeds, and M(0)'s level where the panel has one."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from instil.io import atomic_write_bytes
from instil.metrics import mean_ci95
from instil.report import SHIFT, base_values, per_phase
from instil.viz.style import legend_outside, style_of

PANELS = (("acc_test", "test accuracy (%)"), ("pp", "performance promotion pp"),
          ("f", "forgetting on D(0), f"))
SHIFT_PANEL = (SHIFT, "held-out sub-population, acc_shift (%)")


def panels_for(runs: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The acc_shift panel only when every run scored it: on a shift stream it is the
    accuracy the new observations are meant to raise, so it gets its own axes."""
    scored = [r for r in runs if r["phases"]]
    if scored and all(SHIFT in p for r in scored for p in r["phases"]):
        return PANELS + (SHIFT_PANEL,)
    return PANELS


def base_level(runs: list[dict[str, Any]], key: str) -> float | None:
    """M(0)'s mean over the order seeds for a metric the base model has (pp and f are 0 by
    definition there, so they get no line)."""
    values = base_values(runs, key)
    return mean_ci95(values)[0] if values else None


def plot_curves(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers; set here, not at import of instil
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in runs))
    panels = panels_for(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (key, label) in zip(axes, panels):
        level = base_level(runs, key)
        if level is not None:
            ax.axhline(level, color="grey", linestyle="--", linewidth=1, label="M(0)")
        for method in methods:
            points = per_phase(runs, method, key)
            if not points:
                continue
            t = [p[0] for p in points]
            mean = [p[1] for p in points]
            ci = [0.0 if math.isnan(p[2]) else p[2] for p in points]
            (line,) = ax.plot(t, mean, markersize=5 if len(points) < 3 else 3.5,
                              linewidth=1.4, **style_of(method))
            ax.fill_between(t, [m - c for m, c in zip(mean, ci)],
                            [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("phase")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    legend_outside(fig, list(axes))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
