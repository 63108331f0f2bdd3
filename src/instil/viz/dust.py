"""Dusted images in the spirit of the paper's Fig. 10: the category becomes vague.

Real test images, clean and with Gaussian noise of growing σ (in the normalised input
space, as DBD dusts them), each titled with the teacher's (M(0)'s) predicted class and
confidence. Strong noise moves an image towards the decision boundary, where the teacher's
prediction spreads over several classes: that is the knowledge L_DIS distils.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from instil.config import Config
from instil.data.loaders import BatchPlan
from instil.engine.protocol import open_session, prepare_output, start_seed
from instil.errors import InstilError
from instil.io import atomic_write_bytes
from instil.methods.dbd import batch_statistics, dust


def one_per_class(labels: torch.Tensor, n: int) -> np.ndarray:
    """The first test image of each of the first n classes, for a varied grid."""
    firsts = [int(torch.nonzero(labels == k)[0]) for k in labels.unique()[:n].tolist()]
    return np.asarray(firsts)


@torch.no_grad()
def dusted_predictions(teacher: nn.Module, x: torch.Tensor, sigmas: list[float],
                       seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each σ: the dusted batch and the teacher's softmax on it. Dusted batches are
    normalised with their own statistics, as DBD's distillation pass does."""
    torch.manual_seed(seed)
    out = []
    teacher.eval()
    for sigma in sigmas:
        if sigma > 0:
            x_dust = dust(x, sigma)
            with batch_statistics(teacher):
                probs = teacher(x_dust).softmax(1)
        else:
            x_dust, probs = x, teacher(x).softmax(1)
        out.append((x_dust, probs))
    return out


def dust_figure(config: Config, png: Path, sigmas: list[float], n_images: int = 6,
                show_progress: bool = True) -> None:
    if config.data.name == "toy2d":
        raise InstilError("instil dust needs an image data set; use e.g. "
                          "configs/fmnist-quick.yaml")
    png = Path(png)
    prepare_output(png.parent)
    with tempfile.TemporaryDirectory() as work, open_session(
            config, Path(work), config.base.epochs, show_progress) as session:
        start = start_seed(session, config.order_seeds[0])
        source = session.source
        idx = one_per_class(source.labels("test"), n_images)
        # The shown images ride in a batch of the size training uses, so that the batch
        # statistics that normalise a dusted batch are those DBD's distillation sees.
        others = np.setdiff1d(np.arange(len(source.bundle.test)), idx)[:config.phase.batch_size]
        batch_idx = np.concatenate([idx, others])
        plan = BatchPlan(len(batch_idx), train=False)
        x, _ = next(iter(source.batches("test", batch_idx, plan).epoch(0)))
        rows = [(xd[:len(idx)], p[:len(idx)])
                for xd, p in dusted_predictions(start.m0, x, sigmas, config.seed)]
        bundle = source.bundle
        mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
        std = torch.tensor(bundle.std).view(1, -1, 1, 1)
        images = [(xd.cpu() * std + mean).clamp(0, 1) for xd, _ in rows]
        probs = [p.cpu() for _, p in rows]
        labels = source.labels("test", idx)
        draw(images, probs, labels, bundle.classes, sigmas, png)


def draw(images: list[torch.Tensor], probs: list[torch.Tensor], labels: torch.Tensor,
         classes: list[str], sigmas: list[float], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, axs = plt.subplots(n, len(sigmas), figsize=(1.9 * len(sigmas), 2.0 * n),
                            squeeze=False)
    for j, sigma in enumerate(sigmas):
        for i in range(n):
            ax = axs[i, j]
            img = images[j][i].permute(1, 2, 0).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            conf, pred = probs[j][i].max(0)
            color = "green" if int(pred) == int(labels[i]) else "red"
            title = f"{classes[int(pred)][:12]} {100 * float(conf):.0f}%"
            ax.set_title(f"σ = {sigma:g}\n{title}" if i == 0 else title, fontsize=8,
                         color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(classes[int(labels[i])][:12], fontsize=8)
    fig.suptitle("Dusted inputs: M(0)'s prediction and confidence (green: right, red: wrong)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png, buffer.getvalue())
