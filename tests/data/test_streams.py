"""Stream shapes: class-skewed parts and held-out sub-populations (data.streams, data.subpop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instil.config import SplitConfig
from instil.data.base import DataBundle, Samples
from instil.data.split import load_manifest, make_split, manifest_path, prepare_split
from instil.data.streams import StreamPlan, class_skew_counts, plan_stream
from instil.data.subpop import find_subpopulations
from instil.errors import InstilError


def skewed(concentration: float, seed: int = 0, n: int = 4000):
    labels = np.random.default_rng(9).integers(0, 10, n)
    plan = StreamPlan({"name": "class_skew", "concentration": concentration})
    return make_split(n, seed, 0.5, 10, "f", labels=labels, stream=plan), labels


@pytest.mark.parametrize("concentration", [0.1, 1.0, 100.0])
def test_class_skew_uses_every_incremental_sample_once(concentration: float) -> None:
    split, labels = skewed(concentration)
    rest = np.concatenate(split.phases)
    assert len(np.unique(rest)) == len(rest) == 4000 - len(split.base)
    # Per class, the phases together hold exactly that class's incremental samples.
    counts = np.array(split.class_counts[1:])
    assert counts.sum(0).tolist() == np.bincount(labels[rest], minlength=10).tolist()
    assert [sum(c) for c in split.class_counts[1:]] == [len(p) for p in split.phases]
    sizes = [len(p) for p in split.phases]
    assert max(sizes) - min(sizes) <= 10  # near-equal phases: rounding moves a few samples


def share_of_top_class(split) -> float:
    counts = np.array(split.class_counts[1:], dtype=float)
    return float((counts.max(1) / counts.sum(1)).mean())


def test_concentration_sets_how_skewed_the_phases_are() -> None:
    low, _ = skewed(0.1)
    high, _ = skewed(1000.0)
    assert share_of_top_class(low) > 0.4  # phases dominated by one or two classes
    assert share_of_top_class(high) < 0.16  # near the uniform 0.1 (+ sampling noise)
    counts = np.array(high.class_counts[1:], dtype=float)
    assert np.abs(counts / counts.sum(1, keepdims=True) - 0.1).max() < 0.06


def test_class_skew_counts_keep_the_column_sums_exactly() -> None:
    cols = np.array([300, 250, 7, 1000])
    counts = class_skew_counts(cols, 5, 0.1, np.random.default_rng(3))
    assert counts.sum(0).tolist() == cols.tolist() and (counts >= 0).all()


def test_class_skew_is_seeded_and_keeps_the_iid_base() -> None:
    a, _ = skewed(0.3, seed=1)
    b, _ = skewed(0.3, seed=1)
    c, _ = skewed(0.3, seed=2)
    iid = make_split(4000, 1, 0.5, 10, "f")
    assert all(np.array_equal(x, y) for x, y in zip(a.phases, b.phases))
    assert not np.array_equal(a.phases[0], c.phases[0])
    assert np.array_equal(a.base, iid.base)  # the stream only re-cuts the incremental half


def two_mode_bundle(n_per_class: int = 60) -> DataBundle:
    """Three classes, each of two clearly different kinds of 4x4 image (dark, bright)."""
    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for c in range(3):
        for mode in (0, 1):
            base = 40 + 150 * mode + 10 * c
            images.append(torch.randint(base, base + 20, (n_per_class, 1, 4, 4), generator=g))
            labels += [c] * n_per_class
    x = torch.cat(images).to(torch.uint8)
    y = torch.tensor(labels)
    return DataBundle("twomode", ["a", "b", "c"], Samples(y, tensor=x),
                      Samples(y.clone(), tensor=x.clone()), (1, 4, 4), (0.5,), (0.25,))


def test_subpopulations_are_the_modes_disjoint_and_seeded() -> None:
    bundle = two_mode_bundle()
    a = find_subpopulations(bundle, 2, seed=0)
    b = find_subpopulations(bundle, 2, seed=0)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    y = bundle.train.labels.numpy()
    for c in range(3):
        groups = a.train[y == c]
        # Each mode is one group: the first 60 samples of the class share one, the rest the other.
        assert len(set(groups[:60])) == 1 and len(set(groups[60:])) == 1
        assert groups[0] != groups[60]
    assert np.array_equal(a.train, a.test)  # the same images go to the same groups


def test_d0_has_no_image_of_the_held_out_subpopulation(tmp_path: Path) -> None:
    bundle = two_mode_bundle()
    plan = plan_stream(SplitConfig(stream="subpop_shift", k=2), bundle, order_seed=0, seed=0)
    labels = bundle.train.labels.numpy()
    split = prepare_split(tmp_path, len(labels), 0, 0.4, 3, "f", None, 0.0, labels, plan)
    groups = find_subpopulations(bundle, 2, seed=0)
    held = np.array(plan.record["held_out"])
    assert not np.any(groups.train[split.base] == held[labels[split.base]])
    incremental = np.concatenate(split.phases)
    assert np.any(groups.train[incremental] == held[labels[incremental]])
    assert np.array_equal(groups.test[split.shift_test], held[labels[split.shift_test]])
    assert len(split.shift_test) == 180  # one mode of each class
    # The manifest round-trips, and a run that asks for another stream is refused.
    again = load_manifest(manifest_path(tmp_path, 0))
    assert again.stream == split.stream and np.array_equal(again.shift_test, split.shift_test)
    assert again.class_counts == split.class_counts
    with pytest.raises(InstilError, match="stream"):
        prepare_split(tmp_path, len(labels), 0, 0.4, 3, "f", None, 0.0, labels, StreamPlan())


def test_samples_barred_from_d0_spread_over_every_phase() -> None:
    # A quarter of the samples may not enter D(0) (a held-out sub-population, toy drift):
    # each phase should carry its share of them, not the first phases all of them.
    n = 8000
    barred = np.random.default_rng(5).random(n) < 0.25
    for order_seed in range(3):
        split = make_split(n, order_seed, 0.5, 10, "f", base_eligible=~barred)
        assert not barred[split.base].any()
        share = barred.sum() / (n - len(split.base))
        for part in split.phases:
            assert abs(barred[part].mean() - share) < 0.1, "barred samples bunch in some phases"
    # D(0) is still the head of the order seed's permutation among the eligible samples, so
    # M(0)s trained before the rest was reshuffled stay valid.
    perm = np.random.default_rng(2).permutation(n)
    assert np.array_equal(split.base, perm[~barred[perm]][:len(split.base)])


def test_bad_stream_settings_are_refused() -> None:
    with pytest.raises(InstilError, match="split.stream"):
        SplitConfig(stream="seasonal")
    with pytest.raises(InstilError, match="split.concentration"):
        SplitConfig(stream="class_skew", concentration=0)
