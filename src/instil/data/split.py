"""The instance-incremental split: a base set D(0) and T incremental parts, saved as a manifest.

As in the paper the split is a seeded random permutation, not class-balanced: D(0) takes the
first `base_fraction` of it and the rest is cut into `n_phases` near-equal parts. Changing
`n_phases` re-cuts the same incremental half, so task-number ablations share D(0) and M(0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from instil.data.streams import StreamPlan, class_counts, class_skew_parts, iid_parts
from instil.errors import InstilError
from instil.io import atomic_write_json


@dataclass(frozen=True)
class IILSplit:
    order_seed: int
    base_fraction: float
    n_phases: int
    fingerprint: str
    base: np.ndarray
    phases: tuple[np.ndarray, ...]
    # Held out of every part for tuning: scored instead of the test set, never trained on.
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    validation_fraction: float = 0.0
    # The stream's shape and parameters (data.streams), e.g. {"name": "class_skew", ...}.
    stream: dict = field(default_factory=lambda: {"name": "iid"})
    # Test samples of the sub-populations held out of D(0) (subpop_shift), else empty.
    shift_test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Samples of each class in D(0), D(1), ..., when the labels were known.
    class_counts: list = field(default_factory=list)

    def part(self, phase: int) -> np.ndarray:
        """Indices of D(phase): phase 0 is the base set, 1..T the incremental parts."""
        return self.base if phase == 0 else self.phases[phase - 1]

    def union(self, last_phase: int) -> np.ndarray:
        """D(0) ∪ … ∪ D(last_phase), what joint training sees."""
        return np.concatenate([self.part(t) for t in range(last_phase + 1)])


def make_split(n: int, order_seed: int, base_fraction: float, n_phases: int, fingerprint: str,
               base_eligible: np.ndarray | None = None,
               validation_fraction: float = 0.0, labels: np.ndarray | None = None,
               stream: StreamPlan | None = None) -> IILSplit:
    """Splits n training samples; `base_eligible` keeps drifted samples out of D(0).

    With `validation_fraction` > 0 the first samples of the permutation are held out as a
    validation slice and the rest is split as usual (with 0 the split is unchanged). The
    `stream` decides how the incremental half is cut (data.streams; default: iid).
    """
    stream = stream or StreamPlan()
    if stream.base_eligible is not None:
        base_eligible = stream.base_eligible if base_eligible is None else \
            base_eligible & stream.base_eligible
    if not 0 < base_fraction < 1:
        raise InstilError(f"base_fraction={base_fraction}: must lie strictly between 0 and 1")
    if not 0 <= validation_fraction < 0.5:
        raise InstilError(f"validation_fraction={validation_fraction}: must lie in [0, 0.5)")
    perm = np.random.default_rng(order_seed).permutation(n)
    n_val = int(round(validation_fraction * n))
    validation, perm = perm[:n_val], perm[n_val:]
    n_base = int(round(base_fraction * len(perm)))
    if n_phases < 1 or len(perm) - n_base < n_phases:
        raise InstilError(f"n_phases={n_phases}: cannot cut {len(perm) - n_base} incremental "
                          "samples into that many non-empty parts")
    if base_eligible is None:
        base, rest = perm[:n_base], perm[n_base:]
    else:
        eligible = perm[base_eligible[perm]]
        if len(eligible) < n_base:
            raise InstilError(f"base_fraction={base_fraction}: only {len(eligible)} of {len(perm)} "
                              "samples may enter D(0); lower base_fraction")
        base = eligible[:n_base]
        # Reshuffled: in permutation order, the samples barred from D(0) would come first
        # (D(0) used up the eligible ones of the permutation's head), so the first phases
        # would hold nothing else. Its own generator keeps D(0) as it was.
        rest = np.random.default_rng([order_seed, 3]).permutation(perm[~np.isin(perm, base)])
    if stream.record["name"] == "class_skew":
        if labels is None:
            raise ValueError("a class-skewed stream needs the labels")
        # Its own generator, so that the iid permutation above is the same for every stream.
        rng = np.random.default_rng([order_seed, 1])
        phases = class_skew_parts(rest, labels, n_phases, stream.record["concentration"], rng)
    else:
        phases = iid_parts(rest, n_phases)
    counts = [] if labels is None else class_counts(
        (base, *phases), labels, int(labels.max()) + 1)
    return IILSplit(order_seed, base_fraction, n_phases, fingerprint, base, phases, validation,
                    validation_fraction, stream.record, stream.shift_test, counts)


def manifest_path(out_dir: Path, order_seed: int) -> Path:
    return Path(out_dir) / f"manifest-{order_seed}.json"


def save_manifest(split: IILSplit, path: Path) -> None:
    atomic_write_json(path, {
        "order_seed": split.order_seed,
        "base_fraction": split.base_fraction,
        "n_phases": split.n_phases,
        "fingerprint": split.fingerprint,
        "validation_fraction": split.validation_fraction,
        "stream": split.stream,
        "class_counts": split.class_counts,
        "sizes": {"base": len(split.base), "phases": [len(p) for p in split.phases],
                  "validation": len(split.validation)},
        "base": split.base.tolist(),
        "phases": [p.tolist() for p in split.phases],
        "validation": split.validation.tolist(),
        "shift_test": split.shift_test.tolist(),
    })


def load_manifest(path: Path) -> IILSplit:
    try:
        raw = json.loads(Path(path).read_text())
        return IILSplit(
            order_seed=int(raw["order_seed"]), base_fraction=float(raw["base_fraction"]),
            n_phases=int(raw["n_phases"]), fingerprint=str(raw["fingerprint"]),
            base=np.asarray(raw["base"], dtype=np.int64),
            phases=tuple(np.asarray(p, dtype=np.int64) for p in raw["phases"]),
            validation=np.asarray(raw.get("validation", []), dtype=np.int64),
            validation_fraction=float(raw.get("validation_fraction", 0.0)),
            stream=dict(raw.get("stream", {"name": "iid"})),
            shift_test=np.asarray(raw.get("shift_test", []), dtype=np.int64),
            class_counts=list(raw.get("class_counts", [])),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InstilError(f"{path}: unreadable manifest ({e}); delete it to make a new split") \
            from None


def prepare_split(out_dir: Path, n: int, order_seed: int, base_fraction: float, n_phases: int,
                  fingerprint: str, base_eligible: np.ndarray | None = None,
                  validation_fraction: float = 0.0, labels: np.ndarray | None = None,
                  stream: StreamPlan | None = None) -> IILSplit:
    """Reuses the manifest in `out_dir` when there is one, refusing one made for other data."""
    path = manifest_path(out_dir, order_seed)
    stream = stream or StreamPlan()
    if not path.exists():
        split = make_split(n, order_seed, base_fraction, n_phases, fingerprint, base_eligible,
                           validation_fraction, labels, stream)
        save_manifest(split, path)
        return split
    split = load_manifest(path)
    if split.fingerprint != fingerprint:
        raise InstilError(f"{path}: made for other data (fingerprint {split.fingerprint}, this "
                          f"data {fingerprint}); use another --out or delete the manifest")
    made = (split.base_fraction, split.n_phases, split.validation_fraction)
    if made != (base_fraction, n_phases, validation_fraction):
        raise InstilError(f"{path}: made with base_fraction={split.base_fraction}, "
                          f"n_phases={split.n_phases}, validation_fraction="
                          f"{split.validation_fraction}; use another --out or delete the manifest")
    if split.stream != stream.record:
        raise InstilError(f"{path}: made for the stream {split.stream}, this run asks for "
                          f"{stream.record}; use another --out or delete the manifest")
    return split
