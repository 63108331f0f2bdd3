"""The per-epoch record of a run folder, DIR/epochs.jsonl, and its TensorBoard mirror.

One JSON object a line, appended after every epoch (before the resume state that covers
it is saved), so an interrupted run keeps what it wrote:

    {"method": "dbd", "order_seed": 0, "phase": 2, "epoch": 3, "lr": 0.0097, "seconds": 1.9,
     "images_per_s": 1580.2, "loss": 0.61, "l_fl": 0.52, "l_dis": 0.09, ...}

`method` is the method's label, or "base" for the training of M(0) (phase 0); `epoch`
counts from 1 within the phase; the keys after `images_per_s` are the loss terms averaged
over the epoch's steps (`loss` the total, then the names the method declares) and the
method's epoch facts. When a (method, order seed) run starts, fresh or resumed, the lines
of that pair after the point it starts from are dropped first, so a resumed run continues
the record without duplicates and without gaps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from instil.errors import InstilError
from instil.io import atomic_write_text

EPOCHS_FILE = "epochs.jsonl"
KEY = ("method", "order_seed", "phase", "epoch")
TENSORBOARD_INSTALL = "pip install 'instil[tensorboard]'"


def parse_lines(path: Path) -> list[dict[str, Any]]:
    """The records of `path`, without a line cut short by a kill (or otherwise unreadable)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and all(k in record for k in KEY):
            records.append(record)
    return records


def read_epochs(folder: Path) -> list[dict[str, Any]]:
    """A run folder's per-epoch records ([] when it has none), one per key: should a line
    appear twice (a folder written by hand, or by two writers), the last one counts."""
    unique = {tuple(r[k] for k in KEY): r for r in parse_lines(Path(folder) / EPOCHS_FILE)}
    return list(unique.values())


def prune(folder: Path, method: str, order_seed: int,
          keep_through: tuple[int, int] | None) -> None:
    """Drops the lines of (`method`, `order_seed`) after (phase, epoch) `keep_through`
    (all of them when None: the run starts over), and any unreadable line; the file is
    rewritten only when something goes."""
    path = Path(folder) / EPOCHS_FILE
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    records = parse_lines(path)

    def kept(r: dict[str, Any]) -> bool:
        if r["method"] != method or r["order_seed"] != order_seed:
            return True
        return keep_through is not None and (r["phase"], r["epoch"]) <= keep_through

    keep = [r for r in records if kept(r)]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def clean(value: Any) -> Any:
    """JSON has no NaN: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def line(record: dict[str, Any]) -> str:
    return json.dumps({k: clean(v) for k, v in record.items()}) + "\n"


def append(folder: Path, record: dict[str, Any]) -> None:
    with open(Path(folder) / EPOCHS_FILE, "a") as f:
        f.write(line(record))


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """A whole record at once (a promotion's, beside its report), written atomically."""
    atomic_write_text(path, "".join(line(r) for r in records))


def check_tensorboard() -> None:
    """Refuses log.tensorboard=true, before any training, when TensorBoard is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise InstilError("log.tensorboard=true needs TensorBoard, which is not installed: "
                          f"{TENSORBOARD_INSTALL} (or set log.tensorboard=false)") from None


class Board:
    """TensorBoard writers, one per (method, order seed) under DIR/tensorboard/<method>-<seed>,
    opened when first written to. Per-epoch scalars go under epoch/<name> at a step that
    counts the run's epochs across phases ((phase − 1)·E + epoch; base training: its epoch),
    per-phase metrics under phase/<metric> at the phase."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / "tensorboard"
        self.writers: dict[str, Any] = {}

    def writer(self, method: str, order_seed: int) -> Any:
        name = f"{method}-{order_seed}"
        if name not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[name] = SummaryWriter(log_dir=str(self.folder / name))
        return self.writers[name]

    def epoch(self, record: dict[str, Any], epochs_per_phase: int) -> None:
        phase = record["phase"]
        step = record["epoch"] + (phase - 1) * epochs_per_phase if phase > 0 else record["epoch"]
        writer = self.writer(record["method"], record["order_seed"])
        for name, value in record.items():
            if name not in KEY and isinstance(value, (int, float)):
                writer.add_scalar(f"epoch/{name}", value, step)
        writer.flush()

    def phase(self, method: str, order_seed: int, phase: int, metrics: dict[str, Any]) -> None:
        writer = self.writer(method, order_seed)
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"phase/{name}", value, phase)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
