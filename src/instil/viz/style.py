"""One colour and marker per method name, the same in every figure of the project (dbd is
always the same red), and legends outside the panels.

The colours are fixed by name, not by position in a run's method list, so a figure of two
methods and one of fifteen agree. Families share a hue family where it helps reading (dbd
and its ablations reds and oranges, the replay methods blues and greens) but no two names
share a colour; the marker tells neighbours apart in greyscale too.
"""

from __future__ import annotations

import hashlib
from typing import Any

# tab20's colours and a few of matplotlib's named ones, by method; new methods get an entry.
COLOURS = {
    "dbd": "#d62728",           # red
    "dbd-nofl": "#ff9896",      # light red
    "dbd-nodis": "#ff7f0e",     # orange
    "dbd-nokc": "#ffbb78",      # light orange
    "dbd-dis-only": "#8c564b",  # brown
    "finetune": "#1f77b4",      # blue
    "finetune-es": "#aec7e8",   # light blue
    "joint": "#000000",         # black: the upper bound
    "lwf": "#2ca02c",           # green
    "ewc": "#98df8a",           # light green
    "er": "#9467bd",            # purple
    "icarl": "#c5b0d5",         # light purple
    "icarl-cnn": "#e377c2",     # pink
    "der": "#17becf",           # cyan
    "podnet": "#bcbd22",        # olive
    "podnet-lsc": "#dbdb8d",    # light olive
    "onpro": "#7f7f7f",         # grey
    "base": "#c49c94",          # light brown: M(0)'s training
    "base-podnet-lsc-base": "#f7b6d2",  # light pink
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
# For a name without an entry (a folder-labelled method, a new one): drawn from these by a
# hash of the name, so it too keeps its colour from figure to figure.
SPARE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252",
         "#bd9e39", "#ad494a", "#a55194")


def _digest(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16)


def colour_of(name: str) -> str:
    return COLOURS.get(name) or SPARE[_digest(name) % len(SPARE)]


def marker_of(name: str) -> str:
    names = list(COLOURS)
    index = names.index(name) if name in COLOURS else _digest(name)
    return MARKERS[index % len(MARKERS)]


def style_of(name: str) -> dict[str, Any]:
    """Keyword arguments of `Axes.plot` for method `name`."""
    return {"color": colour_of(name), "marker": marker_of(name), "label": name}


def legend_outside(fig: Any, axes: list[Any]) -> None:
    """One legend for the whole figure, right of the panels, over no data or title."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
