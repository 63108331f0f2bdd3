"""Decision regions on the 2-D toy set: how each method moves the old boundary.

Trains M(0) and every method of the config through all phases (one order seed), then draws
the regions of M(0) and of each final model side by side. The new samples of the
incremental phases are marked as inner (M(0) already right) or outer (M(0) wrong), the
distinction fused labels are built on.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instil.config import Config
from instil.engine.protocol import (
    create_methods,
    method_for,
    open_session,
    planned_epochs,
    prepare_output,
    run_method,
    start_seed,
)
from instil.errors import InstilError
from instil.io import atomic_write_bytes


@torch.no_grad()
def regions(model: nn.Module, xs: np.ndarray, ys: np.ndarray, device: torch.device
            ) -> np.ndarray:
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    model.eval()
    pred = model(torch.as_tensor(grid, dtype=torch.float32, device=device)).argmax(1)
    return pred.cpu().numpy().reshape(len(ys), len(xs))


def boundary_figure(config: Config, png: Path, show_progress: bool = True) -> dict[str, float]:
    """Writes the figure; returns each panel's test accuracy."""
    if config.data.name != "toy2d":
        raise InstilError(f"data.name={config.data.name}: decision regions need the 2-D toy "
                          "set (configs/toy2d.yaml)")
    png = Path(png)
    prepare_output(png.parent)
    config_one = dataclasses.replace(config, order_seeds=config.order_seeds[:1])
    methods = create_methods(config_one)
    # The split's manifest is re-derivable from the order seed: keep it out of the figure's
    # folder (often docs/), in a temporary one.
    with tempfile.TemporaryDirectory() as work, open_session(
            config_one, Path(work), planned_epochs(config_one, methods), show_progress
    ) as session:
        start = start_seed(session, config_one.order_seeds[0])
        models = {"M(0)": start.m0}
        accuracy = {"M(0)": start.ref.acc_test}
        for name in config_one.methods:
            record, model = run_method(session, method_for(config_one, name), start)
            models[name] = model
            accuracy[name] = record["phases"][-1]["acc_test"]
        train = session.source.bundle.train
        new = start.split.union(config_one.n_phases)[len(start.split.base):]
        x_new = train.tensor[new].numpy()
        inner = (session.predict(start.m0, "train", new) == train.labels[new]).numpy()
        grid = axes(train.tensor.numpy())
        panels = {k: regions(m, *grid, session.device) for k, m in models.items()}
    draw(panels, accuracy, grid, x_new, train.labels[new].numpy(), inner, png)
    return accuracy


def axes(points: np.ndarray, steps: int = 300) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = points.min(0) - 0.5, points.max(0) + 0.5
    return np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps)


def draw(panels: dict[str, np.ndarray], accuracy: dict[str, float],
         grid: tuple[np.ndarray, np.ndarray], x_new: np.ndarray, y_new: np.ndarray,
         inner: np.ndarray, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_classes = int(max(p.max() for p in panels.values())) + 1
    cmap = plt.get_cmap("tab10")
    fig, axs = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), sharey=True)
    for ax, (name, region) in zip(np.atleast_1d(axs), panels.items()):
        ax.contourf(*grid, region, levels=np.arange(n_classes + 1) - 0.5,
                    colors=[cmap(k) for k in range(n_classes)], alpha=0.25)
        colors = [cmap(k) for k in y_new]
        ax.scatter(*x_new[inner].T, c=[c for c, i in zip(colors, inner) if i], s=6,
                   marker="o", label="new inner")
        ax.scatter(*x_new[~inner].T, c=[c for c, i in zip(colors, inner) if not i], s=14,
                   marker="x", label="new outer")
        ax.set_title(f"{name}: {accuracy[name]:.1f}% test")
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axs)[0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png, buffer.getvalue())
