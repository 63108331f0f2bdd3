"""losses.png: every loss term of epochs.jsonl per epoch across phases, a line per method
(the mean over order seeds, their range as a band), so that one picture shows how a
method behaves inside its phases. Phase t's epochs lie in (t − 1, t]; M(0)'s training
("base", phase 0) in (−1, 0]."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from instil.engine.epochs import KEY
from instil.io import atomic_write_bytes
from instil.viz.style import legend_outside, style_of

NOT_PLOTTED = (*KEY, "lr", "seconds", "images_per_s")


def term_names(records: list[dict[str, Any]]) -> list[str]:
    """Every plotted name, the total loss first, then in order of first appearance."""
    names = dict.fromkeys(["loss"] if any("loss" in r for r in records) else [])
    for record in records:
        names.update(dict.fromkeys(k for k in record if k not in NOT_PLOTTED))
    return list(names)


def position(record: dict[str, Any], epochs: int) -> float:
    """Where an epoch lies on the x axis: phase t's E epochs at t − 1 + e/E."""
    return record["phase"] - 1 + record["epoch"] / epochs


def series(records: list[dict[str, Any]], method: str, name: str
           ) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, the mean over order seeds, their minimum and maximum, for one method's term."""
    mine = [r for r in records if r["method"] == method and isinstance(r.get(name), (int, float))]
    epochs: dict[tuple[int, int], int] = {}
    for r in mine:
        key = (r["order_seed"], r["phase"])
        epochs[key] = max(epochs.get(key, 0), r["epoch"])
    points: dict[float, list[float]] = {}
    for r in mine:
        if math.isfinite(r[name]):
            points.setdefault(position(r, epochs[(r["order_seed"], r["phase"])]),
                              []).append(r[name])
    xs = sorted(points)
    return (xs, [sum(points[x]) / len(points[x]) for x in xs], [min(points[x]) for x in xs],
            [max(points[x]) for x in xs])


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = term_names(records)
    methods = list(dict.fromkeys(r["method"] for r in records))
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    phases = sorted({r["phase"] for r in records})
    for ax, name in zip(flat, names):
        for method in methods:
            xs, mean, low, high = series(records, method, name)
            if not xs:
                continue
            style = style_of(method)
            ax.plot(xs, mean, linewidth=1.2, markersize=3, markevery=max(1, len(xs) // 12),
                    **style)
            ax.fill_between(xs, low, high, color=style["color"], alpha=0.2, linewidth=0)
        for t in phases:  # phase boundaries
            ax.axvline(t, color="grey", linewidth=0.5, alpha=0.4)
        ax.set_title(name)
        ax.set_xlabel("phase")
        ax.grid(alpha=0.3)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: loss terms per epoch (mean over order seeds, range as band)")
    fig.tight_layout()
    legend_outside(fig, flat[:len(names)])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
