"""acc_test, pp and f per phase: a line per method with its 95% band across order seeds."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from instil.io import atomic_write_bytes
from instil.report import per_phase

PANELS = (("acc_test", "test accuracy (%)"), ("pp", "performance promotion pp"),
          ("f", "forgetting on D(0), f"))


def plot_curves(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen on servers; set here, not at import of instil
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in runs))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (key, label) in zip(axes, PANELS):
        for method in methods:
            points = per_phase(runs, method, key)
            if not points:
                continue
            t = [p[0] for p in points]
            mean = [p[1] for p in points]
            ci = [0.0 if math.isnan(p[2]) else p[2] for p in points]
            marker = "o" if len(points) < 3 else "."
            (line,) = ax.plot(t, mean, marker=marker, label=method)
            ax.fill_between(t, [m - c for m, c in zip(mean, ci)],
                            [m + c for m, c in zip(mean, ci)], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("phase")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
