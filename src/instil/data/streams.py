"""Shapes of the stream of new observations: how the incremental half is cut into parts.

`iid` is the paper's cut (random near-equal parts). `class_skew` gives each phase its own
class mix, drawn from a Dirichlet: real new observations come in seasons and product lines,
not as a uniform tenth of everything. Every incremental sample is still used exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from instil.errors import InstilError

if TYPE_CHECKING:
    from instil.config import SplitConfig
    from instil.data.base import DataBundle


_GROUPS: dict[tuple, Any] = {}  # the last data set's sub-populations (see plan_stream)


@dataclass(frozen=True)
class StreamPlan:
    """A stream resolved for one order seed: what the manifest records, the samples allowed
    into D(0), and the test samples of what D(0) lacks."""

    record: dict[str, Any] = field(default_factory=lambda: {"name": "iid"})
    base_eligible: np.ndarray | None = None
    shift_test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def plan_stream(cfg: SplitConfig, bundle: DataBundle, order_seed: int, seed: int) -> StreamPlan:
    if cfg.stream == "iid":
        return StreamPlan()
    if cfg.stream == "class_skew":
        return StreamPlan({"name": "class_skew", "concentration": cfg.concentration})
    from instil.data.subpop import find_subpopulations, held_out_groups

    # The groups depend on the run's seed only; which one each class lacks, on the order seed.
    key = (bundle.fingerprint, cfg.k, seed)
    if key not in _GROUPS:  # k-means over the training set once per run, not once per seed
        _GROUPS.clear()
        _GROUPS[key] = find_subpopulations(bundle, cfg.k, seed)
    groups = _GROUPS[key]
    held = held_out_groups(bundle.num_classes, cfg.k, np.random.default_rng([order_seed, 2]))
    train_labels, test_labels = bundle.train.labels.numpy(), bundle.test.labels.numpy()
    return StreamPlan(
        {"name": "subpop_shift", "k": cfg.k, "held_out": held.tolist()},
        base_eligible=groups.train != held[train_labels],
        shift_test=np.nonzero(groups.test == held[test_labels])[0].astype(np.int64))


def iid_parts(rest: np.ndarray, n_phases: int) -> tuple[np.ndarray, ...]:
    return tuple(np.array_split(rest, n_phases))


def sinkhorn(weights: np.ndarray, rows: np.ndarray, cols: np.ndarray,
             iterations: int = 2000, tolerance: float = 1e-9) -> np.ndarray:
    """Scales the rows and columns of a positive matrix until its sums are `rows` and `cols`
    (iterative proportional fitting): the closest allocation to the drawn mixes, in the
    relative-entropy sense, that uses every sample once and keeps the phase sizes."""
    m = weights.astype(np.float64).copy()
    for _ in range(iterations):
        m *= (rows / m.sum(1))[:, None]
        m *= (cols / m.sum(0))[None, :]
        if np.abs(m.sum(1) - rows).max() <= tolerance * rows.max():
            break
    return m


def round_columns(m: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Integer counts per column summing exactly to `cols`, by largest remainders."""
    floor = np.floor(m).astype(np.int64)
    for c in range(m.shape[1]):
        short = int(cols[c] - floor[:, c].sum())
        if short > 0:
            order = np.argsort(-(m[:, c] - floor[:, c]), kind="stable")
            floor[order[:short], c] += 1
    return floor


def class_skew_counts(class_counts: np.ndarray, n_phases: int, concentration: float,
                      rng: np.random.Generator) -> np.ndarray:
    """A phases × classes matrix of sample counts: rows near-equal, columns exactly
    `class_counts`, each row's mix drawn from Dirichlet(concentration)."""
    total = int(class_counts.sum())
    rows = np.array([len(p) for p in np.array_split(np.arange(total), n_phases)], dtype=float)
    mixes = rng.dirichlet(np.full(len(class_counts), concentration), size=n_phases)
    # A tiny floor keeps the fitting defined where a draw underflows to exactly zero.
    fitted = sinkhorn(np.maximum(mixes, 1e-12), rows, class_counts.astype(float))
    return round_columns(fitted, class_counts)


def class_skew_parts(rest: np.ndarray, labels: np.ndarray, n_phases: int,
                     concentration: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Cuts `rest` (already in random order) into parts with skewed class mixes."""
    classes = np.unique(labels[rest])
    by_class = [rest[labels[rest] == c] for c in classes]
    counts = class_skew_counts(np.array([len(b) for b in by_class]), n_phases,
                               concentration, rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_phases)]
    for c, members in enumerate(by_class):
        bounds = np.concatenate([[0], np.cumsum(counts[:, c])])
        for t in range(n_phases):
            parts[t].append(members[bounds[t]:bounds[t + 1]])
    out = tuple(rng.permutation(np.concatenate(p)) for p in parts)
    if any(len(p) == 0 for p in out):
        raise InstilError(f"split.stream=class_skew: a phase came out empty with {len(rest)} "
                          f"incremental samples in {n_phases} phases; lower n_phases")
    return out


def class_counts(parts: tuple[np.ndarray, ...], labels: np.ndarray,
                 num_classes: int) -> list[list[int]]:
    """Samples of each class in each part, for the manifest."""
    return [np.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
