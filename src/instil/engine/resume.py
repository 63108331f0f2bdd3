"""The state of an unfinished method run, saved after every epoch and every phase, so that
`instil run --resume` goes on after the last finished epoch (a `kill -9` included) and ends
with the numbers an uninterrupted run gives.

The method object is saved whole, with pickle: every method keeps different state (a
teacher, an exemplar memory, a Fisher matrix, a replay buffer, numpy generators), and
pickling all of it is the one way that cannot forget a piece (tests/engine/test_resume.py
checks every method for exactly equal numbers). Pickles break across versions, which is
why checkpoints meant to be kept are tensors-only; this state is only ever read back by
the same versions of instil and torch (checked) in the same run folder. What belongs to the run
rather than to the method (the session and the data on the device) is saved as a name and
handed back on loading (pickle's persistent ids). These files are instil's own
scratch state inside the run folder, read only by --resume of that folder; they are not
checkpoints to exchange (those are tensors-only, see instil.checkpoint), and the folder
`state/` is deleted once the method's run has finished.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from instil.engine.distributed import World
from instil.engine.fit import Progress
from instil.errors import InstilError
from instil.io import atomic_write_bytes


@dataclass
class RunState:
    """An unfinished run of one method on one order seed."""

    config: dict[str, Any]  # the run's config, so that another protocol is never resumed
    method: Any  # the Method object, whole
    phases: list[dict[str, Any]]  # the metrics of every finished phase
    phase: int  # the phase in progress, or the last finished one when progress is None
    progress: Progress | None  # where training of `phase` stands; None: `phase` is finished
    rng: dict[str, Any] = field(default_factory=dict)  # mid-phase generators; {} at its end
    wall_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=lambda: versions())


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"instil": version("instil"), "torch": torch.__version__}


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, externals: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.externals = externals

    def persistent_id(self, obj: Any) -> str | None:
        return self.externals.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, externals: dict[str, Any]) -> None:
        super().__init__(file)
        self.externals = externals

    def persistent_load(self, pid: str) -> Any:
        return self.externals[pid]


def state_path(out: Path, method: str, order_seed: int, w: World | None = None) -> Path:
    """One file per method and seed; under torchrun one per rank too (each rank's random
    state differs)."""
    rank = f".rank{w.rank}" if w is not None and w.distributed else ""
    return Path(out) / "state" / f"{method}-{order_seed}{rank}.pkl"


def save_state(path: Path, state: RunState, externals: dict[str, Any]) -> None:
    """Pickles `state`, writing each object of `externals` as its name."""
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, {id(obj): name for name, obj in externals.items()}).dump(state)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise InstilError(f"{type(state.method).__name__} cannot be saved for --resume "
                          f"({e}); a method must keep only picklable state") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, externals: dict[str, Any]) -> RunState:
    try:
        state = _Unpickler(io.BytesIO(path.read_bytes()), externals).load()
    except Exception as e:  # a damaged scratch file: the user can delete it and rerun
        raise InstilError(f"{path}: unreadable resume state ({type(e).__name__}); delete it "
                          "to rerun that method and seed from the start") from None
    if not isinstance(state, RunState):
        raise InstilError(f"{path}: not an instil resume state; delete it")
    if state.versions != versions():
        raise InstilError(f"{path}: written by {state.versions}, this is {versions()}; delete "
                          "it to rerun that method and seed from the start")
    return state
