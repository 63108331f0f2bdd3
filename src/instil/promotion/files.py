"""`instil promote`: a checkpoint file in, `instil.promote`, a checkpoint file out.

The deployed model is an instil checkpoint, or a torchvision state dict with its
architecture and class names; its images are folders read as the checkpoint says the model
takes them. The promoted model is written, atomically, only when the gate passes; the
reports are written either way; the input checkpoint is only ever read. The whole
promotion holds --out's lock (NEW_CKPT.lock beside it): a second promotion to the same
--out is refused rather than racing this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from instil.api import promote
from instil.checkpoint import (
    Checkpoint,
    build_model,
    from_torchvision,
    load_checkpoint,
    of_model,
    read_class_names,
    save_checkpoint,
)
from instil.engine.device import rng_state
from instil.engine.epochs import write_records
from instil.engine.protocol import prepare_output
from instil.errors import InstilError
from instil.io import atomic_write_json, atomic_write_text
from instil.lock import file_lock
from instil.promotion.folders import ImageFormat
from instil.promotion.phase import Augment
from instil.promotion.report import history_entry, report_markdown


@dataclass(frozen=True)
class PromoteRequest:
    """What `instil promote` was asked to do (the command line's flags)."""

    model: Path
    new_data: Path
    out: Path
    holdout: Path | None = None
    method: str = "dbd"
    arch: str | None = None  # a torchvision state dict: its architecture ...
    classes: Path | None = None  # ... and its class names, one per line
    image_size: int = 224  # ... and its input size
    epochs: int = 12
    lr: float = 0.01
    batch_size: int = 64
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, keys of the promotion's Config
    device: str = "auto"
    seed: int = 0
    min_gain: float = 0.0  # percentage points of holdout accuracy
    max_nfr: float = 2.0  # percent of the holdout
    report_dir: Path | None = None
    overwrite: bool = False
    show_progress: bool = True


@dataclass(frozen=True)
class Outcome:
    report: dict[str, Any]
    passed: bool
    report_files: tuple[Path, Path, Path]  # JSON, Markdown, the per-epoch record


def report_files(request: PromoteRequest) -> tuple[Path, Path, Path]:
    """NEW_CKPT with suffix .report.json / .report.md / .epochs.jsonl (the training's
    per-epoch record, one JSON object a line as in a run folder's epochs.jsonl), or files
    of those names under --report."""
    out = Path(request.out)
    stem = out.with_suffix("").name
    folder = Path(request.report_dir) if request.report_dir else out.parent
    return (folder / f"{stem}.report.json", folder / f"{stem}.report.md",
            folder / f"{stem}.epochs.jsonl")


def check_outputs(request: PromoteRequest) -> None:
    """Refuses, before anything is read, an --out that would replace the input or a file."""
    model, out = Path(request.model), Path(request.out)
    if out.resolve() == model.resolve() or (out.exists() and model.exists()
                                            and out.samefile(model)):
        raise InstilError(f"--out {out} is the input checkpoint --model; promote never "
                          "replaces its input: choose another --out")
    if out.exists() and not request.overwrite:
        raise InstilError(f"--out {out} exists; add --overwrite to replace it or choose "
                          "another --out")
    if out.is_dir():
        raise InstilError(f"--out {out} is a folder; give a file name, e.g. {out}/promoted.pt")
    for folder in {out.parent, report_files(request)[0].parent}:
        prepare_output(folder)


def open_checkpoint(request: PromoteRequest) -> Checkpoint:
    """The instil checkpoint at --model, or the torchvision state dict given with --arch."""
    if (request.arch is None) != (request.classes is None):
        raise InstilError("--arch and --classes go together: a torchvision state dict needs "
                          "its architecture and its class names (one per line, output order)")
    if request.arch is None:
        return load_checkpoint(request.model)
    return from_torchvision(request.model, request.arch, read_class_names(request.classes),
                            request.image_size)


def checkpoint_augment(ckpt: Checkpoint) -> Augment | None:
    """The checkpoint config's data.crop_padding / data.flip where present (what the model
    was trained with), else None: the default for its channels."""
    data = ckpt.config.get("data", {}) if isinstance(ckpt.config, dict) else {}
    if "crop_padding" not in data and "flip" not in data:
        return None
    default = Augment.default_for(tuple(ckpt.input_shape))
    return Augment(data.get("crop_padding", default.crop_padding), data.get("flip", True))


def promoted_checkpoint(ckpt: Checkpoint, model: nn.Module, report: dict[str, Any]
                        ) -> Checkpoint:
    """Same architecture, classes and normalisation; history grown by this promotion."""
    return of_model(model, ckpt.model, ckpt.model_options, ckpt.input_shape, ckpt.classes,
                    ckpt.mean, ckpt.std, config=ckpt.config,
                    history=[*ckpt.history, history_entry(report)], rng=rng_state())


def promote_checkpoint(request: PromoteRequest) -> Outcome:
    """Promotes the checkpoint at --model into --out, under --out's lock. Every check of the
    input comes before any training."""
    with file_lock(request.out):
        return promote_locked(request)


def promote_locked(request: PromoteRequest) -> Outcome:
    check_outputs(request)
    ckpt = open_checkpoint(request)
    image_format = ImageFormat.of_checkpoint(ckpt, request.model)
    promotion = promote(
        build_model(ckpt, request.model), request.new_data, holdout=request.holdout,
        method=request.method, epochs=request.epochs, lr=request.lr,
        batch_size=request.batch_size, augment=checkpoint_augment(ckpt),
        min_gain=request.min_gain, max_nfr=request.max_nfr, device=request.device,
        seed=request.seed, classes=ckpt.classes, image_format=image_format,
        settings=request.overrides, show_progress=request.show_progress)
    report = {**promotion.report, "model": str(request.model), "arch": request.arch,
              "out": str(request.out)}
    json_file, md_file, epochs_file = report_files(request)
    if promotion.passed:  # the checkpoint first: a report never names a file not written
        new_ckpt = promoted_checkpoint(ckpt, promotion.model, report)
        build_model(new_ckpt, request.out)  # rebuilds from the registry, or fails unwritten
        save_checkpoint(request.out, new_ckpt)
    atomic_write_json(json_file, report)
    atomic_write_text(md_file, report_markdown(report))
    write_records(epochs_file, report["epochs"])
    return Outcome(report, promotion.passed, (json_file, md_file, epochs_file))
