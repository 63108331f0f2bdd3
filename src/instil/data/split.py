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

    def part(self, phase: int) -> np.ndarray:
        """Indices of D(phase): phase 0 is the base set, 1..T the incremental parts."""
        return self.base if phase == 0 else self.phases[phase - 1]

    def union(self, last_phase: int) -> np.ndarray:
        """D(0) ∪ … ∪ D(last_phase), what joint training sees."""
        return np.concatenate([self.part(t) for t in range(last_phase + 1)])


def make_split(n: int, order_seed: int, base_fraction: float, n_phases: int, fingerprint: str,
               base_eligible: np.ndarray | None = None,
               validation_fraction: float = 0.0) -> IILSplit:
    """Splits n training samples; `base_eligible` keeps drifted samples out of D(0).

    With `validation_fraction` > 0 the first samples of the permutation are held out as a
    validation slice and the rest is split as usual (with 0 the split is unchanged).
    """
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
        rest = perm[~np.isin(perm, base)]
    phases = tuple(np.array_split(rest, n_phases))
    return IILSplit(order_seed, base_fraction, n_phases, fingerprint, base, phases, validation,
                    validation_fraction)


def manifest_path(out_dir: Path, order_seed: int) -> Path:
    return Path(out_dir) / f"manifest-{order_seed}.json"


def save_manifest(split: IILSplit, path: Path) -> None:
    atomic_write_json(path, {
        "order_seed": split.order_seed,
        "base_fraction": split.base_fraction,
        "n_phases": split.n_phases,
        "fingerprint": split.fingerprint,
        "validation_fraction": split.validation_fraction,
        "sizes": {"base": len(split.base), "phases": [len(p) for p in split.phases],
                  "validation": len(split.validation)},
        "base": split.base.tolist(),
        "phases": [p.tolist() for p in split.phases],
        "validation": split.validation.tolist(),
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
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InstilError(f"{path}: unreadable manifest ({e}); delete it to make a new split") \
            from None


def prepare_split(out_dir: Path, n: int, order_seed: int, base_fraction: float, n_phases: int,
                  fingerprint: str, base_eligible: np.ndarray | None = None,
                  validation_fraction: float = 0.0) -> IILSplit:
    """Reuses the manifest in `out_dir` when there is one, refusing one made for other data."""
    path = manifest_path(out_dir, order_seed)
    if not path.exists():
        split = make_split(n, order_seed, base_fraction, n_phases, fingerprint, base_eligible,
                           validation_fraction)
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
    return split
