from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instil.data.split import load_manifest, make_split, manifest_path, prepare_split
from instil.errors import InstilError


def test_sizes_and_disjoint_cover() -> None:
    split = make_split(1003, order_seed=0, base_fraction=0.5, n_phases=10, fingerprint="f")
    assert len(split.base) == 502  # round(501.5) rounds to even
    assert [len(p) for p in split.phases] == [51] * 1 + [50] * 9
    everything = np.concatenate([split.base, *split.phases])
    assert len(everything) == 1003 and len(np.unique(everything)) == 1003


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    a = make_split(500, 3, 0.5, 5, "f")
    b = make_split(500, 3, 0.5, 5, "f")
    c = make_split(500, 4, 0.5, 5, "f")
    assert np.array_equal(a.base, b.base)
    assert all(np.array_equal(x, y) for x, y in zip(a.phases, b.phases))
    assert not np.array_equal(a.base, c.base)


def test_more_phases_recut_the_same_incremental_half() -> None:
    ten = make_split(600, 0, 0.5, 10, "f")
    twenty = make_split(600, 0, 0.5, 20, "f")
    assert np.array_equal(ten.base, twenty.base)
    assert np.array_equal(np.concatenate(ten.phases), np.concatenate(twenty.phases))


def test_split_is_random_not_class_balanced() -> None:
    labels = np.arange(1000) % 10
    split = make_split(1000, 0, 0.5, 10, "f")
    counts = np.bincount(labels[split.phases[0]], minlength=10)
    assert counts.min() != counts.max()


def test_base_eligible_keeps_others_out_of_base() -> None:
    eligible = np.arange(400) % 4 != 0
    split = make_split(400, 0, 0.5, 4, "f", base_eligible=eligible)
    assert eligible[split.base].all()
    assert (~eligible[np.concatenate(split.phases)]).sum() == 100


def test_manifest_round_trip_and_reuse(tmp_path: Path) -> None:
    made = prepare_split(tmp_path, 300, 7, 0.5, 3, "abc")
    saved = json.loads(manifest_path(tmp_path, 7).read_text())
    assert saved["fingerprint"] == "abc" and saved["order_seed"] == 7
    loaded = load_manifest(manifest_path(tmp_path, 7))
    assert np.array_equal(made.base, loaded.base)
    assert all(np.array_equal(x, y) for x, y in zip(made.phases, loaded.phases))
    # A rerun reuses the manifest even if the seeded permutation were to change.
    reused = prepare_split(tmp_path, 300, 7, 0.5, 3, "abc")
    assert np.array_equal(reused.base, made.base)


def test_manifest_of_other_data_is_refused(tmp_path: Path) -> None:
    prepare_split(tmp_path, 300, 0, 0.5, 3, "abc")
    with pytest.raises(InstilError, match="other data"):
        prepare_split(tmp_path, 300, 0, 0.5, 3, "xyz")
    with pytest.raises(InstilError, match="n_phases=3"):
        prepare_split(tmp_path, 300, 0, 0.5, 5, "abc")


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(InstilError, match="base_fraction"):
        make_split(100, 0, 1.0, 3, "f")
    with pytest.raises(InstilError, match="n_phases"):
        make_split(10, 0, 0.5, 6, "f")


def test_validation_slice_is_held_out_of_every_part(tmp_path: Path) -> None:
    plain = make_split(1000, 0, 0.5, 5, "f")
    held = make_split(1000, 0, 0.5, 5, "f", validation_fraction=0.1)
    assert len(held.validation) == 100 and len(plain.validation) == 0
    parts = np.concatenate([held.base, *held.phases])
    assert len(parts) == 900 and not np.isin(held.validation, parts).any()
    assert len(held.base) == 450
    prepare_split(tmp_path, 1000, 0, 0.5, 5, "f", validation_fraction=0.1)
    reloaded = load_manifest(manifest_path(tmp_path, 0))
    assert np.array_equal(reloaded.validation, held.validation)
    with pytest.raises(InstilError, match="validation_fraction=0.1"):
        prepare_split(tmp_path, 1000, 0, 0.5, 5, "f")
