"""`instil promote`: one instance-incremental phase on a deployed model, gated by a holdout.

The deployed model (an instil checkpoint, or a torchvision ResNet state dict with its class
names) learns new labelled images of its own classes with one IIL method (default DBD), with
no old data. Its holdout accuracy before and after, per class, and the negative flips
(holdout images it got right before and gets wrong after) decide whether the promoted model
is written: only when the gain reaches --min-gain and the negative-flip rate stays within
--max-nfr. The reports are written either way; the input checkpoint is only ever read.

Images are read as the model was trained on them: in its channel mode (one channel is
grayscale, three RGB), brought to its input size (shorter side resized, centre cropped;
for square images a plain resize) and normalised with its mean and std. They are decoded
once into one uint8 tensor on the device, so training batches are cut and augmented there
like Fashion-MNIST's: a random crop with zero padding and a horizontal flip (see
`augmentation`). That costs N·C·H·W bytes: 1.5 GB for 10,000 RGB images at 224 pixels.

The phase runs through the protocol's own `train_phase` (seeding, PhaseContext, SourceData,
the engine's `fit`), as phase 1 of 1. There is no D(0): a method that reads the split's
base set (EWC's Fisher information of phase 1) gets the new data in its place, i.e. the
Fisher information of the deployed model on the new images.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from tqdm import tqdm

from instil.checkpoint import (
    Checkpoint,
    build_model,
    from_torchvision,
    load_checkpoint,
    of_model,
    read_class_names,
    save_checkpoint,
)
from instil.config import Config, apply_override, from_dict
from instil.data.base import DataBundle, Samples
from instil.data.export import folder_name
from instil.data.folder import check_images, read_image, scan_class_folders
from instil.data.loaders import DataSource
from instil.data.split import IILSplit
from instil.engine.device import resolve_device, rng_state
from instil.engine.memory_format import channels_last_choice
from instil.engine.precision import check_precision
from instil.engine.protocol import Session, method_for, options_of, prepare_output, train_phase
from instil.errors import InstilError
from instil.io import atomic_write_json, atomic_write_text
from instil.lock import file_lock
from instil.methods.base import Method

HOLDOUT_FRACTION = 0.2  # of --new-data, per class, when no --holdout is given
LISTED_FLIPS = 20  # file paths listed per kind of flip
# Augmentation when the checkpoint's config has none: a 4-pixel crop padding and flips
# for RGB (the CIFAR presets), 2 for grayscale (fmnist-quick: 28-pixel images).
DEFAULT_CROP_PADDING = {1: 2, 3: 4}


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
class Images:
    """Labelled images as the model reads them: uint8 N×C×H×W, labels in its class order."""

    paths: list[Path]
    labels: torch.Tensor
    tensor: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> Images:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return Images([self.paths[i] for i in indices.tolist()], self.labels[index],
                      self.tensor[index])

    def samples(self) -> Samples:
        return Samples(labels=self.labels, tensor=self.tensor)


@dataclass(frozen=True)
class Outcome:
    report: dict[str, Any]
    passed: bool
    report_files: tuple[Path, Path]  # JSON, Markdown


# --- inputs -------------------------------------------------------------------------------

def report_files(request: PromoteRequest) -> tuple[Path, Path]:
    """NEW_CKPT with suffix .report.json / .report.md, or files of that name under --report."""
    out = Path(request.out)
    stem = out.with_suffix("").name
    folder = Path(request.report_dir) if request.report_dir else out.parent
    return folder / f"{stem}.report.json", folder / f"{stem}.report.md"


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
        ckpt = load_checkpoint(request.model)
    else:
        ckpt = from_torchvision(request.model, request.arch, read_class_names(request.classes),
                                request.image_size)
    image_mode(ckpt, request.model)
    return ckpt


def image_mode(ckpt: Checkpoint, where: Path) -> str:
    """"L" for a one-channel model, "RGB" for three; refuses models of other inputs."""
    shape = ckpt.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise InstilError(f"{where}: a {ckpt.model} with input shape {shape}; promote needs an "
                          "image model (1 or 3 channels)")
    return "L" if shape[0] == 1 else "RGB"


def match_folders(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The images under root/<class>/ and their class indices in the model's order. Every
    folder must be a class of the model; classes may lack a folder."""
    found, paths, labels = scan_class_folders(root)
    index = {folder_name(c): i for i, c in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        missing = [c for c in classes if folder_name(c) not in found]
        raise InstilError(
            f"{root}: folders that are not classes of the model: "
            f"{', '.join(unknown)}; the model's classes missing from {root}: "
            f"{', '.join(missing) or 'none'} (folders are named by class, '/' written as '_')")
    return paths, [index[found[label]] for label in labels]


def read_images(paths: list[Path], input_shape: tuple[int, ...]) -> torch.Tensor:
    """Decodes `paths` to uint8 N×C×H×W in the model's channel mode and input size."""
    channels, height, width = input_shape
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in paths:
        image = read_image(path, mode)
        if image.size != (width, height):  # PIL sizes are (width, height)
            image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image))
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()


def load_folder(root: Path, ckpt: Checkpoint) -> Images:
    paths, labels = match_folders(Path(root), ckpt.classes)
    check_images(paths)  # a corrupt file fails here, before any training
    return Images(paths, torch.tensor(labels, dtype=torch.int64),
                  read_images(paths, ckpt.input_shape))


def split_holdout(labels: torch.Tensor, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices: a seeded `fraction` of every class held out, as the
    imagefolder loader does, so that no class with two or more images misses either side."""
    rng = np.random.default_rng(seed)
    array = labels.numpy()
    held = np.zeros(len(array), dtype=bool)
    for label in np.unique(array):
        members = np.flatnonzero(array == label)
        n_held = min(max(1, round(fraction * len(members))), len(members) - 1)
        held[rng.choice(members, size=n_held, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def new_and_holdout(request: PromoteRequest, ckpt: Checkpoint) -> tuple[Images, Images]:
    new = load_folder(request.new_data, ckpt)
    if request.holdout is not None:
        holdout = load_folder(request.holdout, ckpt)
    else:
        train, held = split_holdout(new.labels, HOLDOUT_FRACTION, request.seed)
        new, holdout = new.subset(train), new.subset(held)
    if len(new) < 2 or len(holdout) < 1:
        raise InstilError(f"{request.new_data}: {len(new)} images to train on and "
                          f"{len(holdout)} to score; promote needs at least 2 and 1 (add "
                          "images, or pass --holdout)")
    return new, holdout


# --- the promotion's config and method ----------------------------------------------------

def augmentation(ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint config's data.crop_padding / data.flip where present, else the
    defaults for its channels (DEFAULT_CROP_PADDING, flip on)."""
    data = ckpt.config.get("data", {}) if isinstance(ckpt.config, dict) else {}
    return {"crop_padding": data.get("crop_padding", DEFAULT_CROP_PADDING[ckpt.input_shape[0]]),
            "flip": data.get("flip", True)}


def promotion_config(request: PromoteRequest, ckpt: Checkpoint) -> Config:
    """A run config of one phase: the flags, then --set, then the checkpoint's model."""
    raw: dict[str, Any] = {
        "name": "promote", "methods": [request.method], "n_phases": 1, "seed": request.seed,
        "device": request.device, "save_models": False,
        "data": {"name": "imagefolder", **augmentation(ckpt)},
        "phase": {"epochs": request.epochs, "lr": request.lr,
                  "batch_size": request.batch_size},
    }
    for item in request.overrides:
        apply_override(raw, item)
    config = from_dict(Config, raw, "")
    if config.methods != [request.method]:
        raise InstilError("--set methods=...: promote runs one method; use --method")
    return dataclasses.replace(config, model=dataclasses.replace(
        config.model, name=ckpt.model, options=dict(ckpt.model_options)))


def promotion_method(config: Config) -> Method:
    """The method, refused when it needs old data or cannot work with the budget."""
    name = config.methods[0]
    method = method_for(config, name)
    if method.uses_old_data:
        raise InstilError(f"--method {name} trains on old data (exemplars or the full set), "
                          "which promote does not have; use dbd, finetune, lwf, ewc or "
                          "finetune-es")
    try:
        method.check_budget(method.budget(config.base, config.phase))
    except InstilError as e:  # the protocol's key phase.epochs is --epochs here
        raise InstilError(str(e).replace("phase.epochs", "--epochs")) from None
    return method


# --- comparison, gate and reports ---------------------------------------------------------

def percent(hits: torch.Tensor) -> float | None:
    return 100.0 * hits.sum().item() / len(hits) if len(hits) else None


def flip_files(mask: torch.Tensor, holdout: Images, before: torch.Tensor,
               after: torch.Tensor, classes: list[str]) -> list[dict[str, str]]:
    return [{"path": str(holdout.paths[i]), "class": classes[int(holdout.labels[i])],
             "before": classes[int(before[i])], "after": classes[int(after[i])]}
            for i in torch.nonzero(mask).flatten()[:LISTED_FLIPS].tolist()]


def compare(before: torch.Tensor, after: torch.Tensor, holdout: Images,
            classes: list[str]) -> dict[str, Any]:
    """Holdout accuracy before and after, per class, and the flips between the two."""
    labels = holdout.labels
    right_before, right_after = before == labels, after == labels
    negative, positive = right_before & ~right_after, ~right_before & right_after
    per_class = []
    for k, name in enumerate(classes):
        mask = labels == k
        b, a = percent(right_before[mask]), percent(right_after[mask])
        per_class.append({"class": name, "images": int(mask.sum()), "before": b, "after": a,
                          "change": None if a is None else a - b})
    n = len(labels)
    # From counts, so that an unchanged model has a gain of exactly zero.
    gain = 100.0 * (int(right_after.sum()) - int(right_before.sum())) / n
    return {
        "acc_before": percent(right_before), "acc_after": percent(right_after), "gain": gain,
        "per_class": per_class,
        "negative_flips": {"count": int(negative.sum()), "nfr": percent(negative),
                           "files": flip_files(negative, holdout, before, after, classes)},
        "positive_flips": {"count": int(positive.sum()), "rate": percent(positive),
                           "files": flip_files(positive, holdout, before, after, classes)},
    }


def gate(gain: float, nfr: float, min_gain: float, max_nfr: float) -> tuple[bool, str]:
    """Whether the promoted model may be written, and why, in one line."""
    failed = []
    if gain < min_gain:
        failed.append(f"gain {gain:+.2f} points is below --min-gain {min_gain:.2f}")
    if nfr > max_nfr:
        failed.append(f"negative-flip rate {nfr:.2f}% exceeds --max-nfr {max_nfr:.2f}%")
    if failed:
        return False, " and ".join(failed)
    return True, (f"gain {gain:+.2f} >= --min-gain {min_gain:.2f} and negative-flip rate "
                  f"{nfr:.2f}% <= --max-nfr {max_nfr:.2f}%")


def fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what ran, the per-class table, flips, the gate's verdict."""
    train, new, hold = report["train"], report["new_data"], report["holdout"]
    neg, pos = report["negative_flips"], report["positive_flips"]
    lines = [
        f"## Promotion of {report['model']} with {report['method']}",
        "",
        f"- new data: {new['folder']}, {new['images']} images trained on",
        f"- holdout: {hold['source']}, {hold['images']} images",
        f"- training: {train['epochs']} epochs, lr {train['lr']}, batch size "
        f"{train['batch_size']}, crop padding {train['crop_padding']}, flip "
        f"{'on' if train['flip'] else 'off'}, seed {train['seed']}; "
        f"{report['train_seconds']:.1f} s on {train['device']}",
        "",
        "| class | holdout images | acc before | acc after | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["per_class"]:
        lines.append(f"| {row['class']} | {row['images']} | {fmt(row['before'])} | "
                     f"{fmt(row['after'])} | {fmt(row['change'], sign=True)} |")
    lines += [
        f"| **all** | {hold['images']} | {fmt(report['acc_before'])} | "
        f"{fmt(report['acc_after'])} | **{fmt(report['gain'], sign=True)}** |",
        "",
        f"Negative flips (right before, wrong after): {neg['count']}, nfr "
        f"{fmt(neg['nfr'])}% of the holdout. Positive flips (wrong before, right after): "
        f"{pos['count']} ({fmt(pos['rate'])}%).",
        "",
        f"Gate: {'passed' if report['gate']['passed'] else 'failed'}: "
        f"{report['gate']['reason']}; "
        + (f"wrote {report['out']}." if report["gate"]["passed"]
           else f"{report['out']} not written."),
    ]
    for title, flips in (("Negative", neg), ("Positive", pos)):
        if flips["files"]:
            shown = len(flips["files"])
            lines += ["", f"### {title} flips"
                      + (f" (first {shown} of {flips['count']})" if shown < flips["count"]
                         else ""), ""]
            lines += [f"- {f['path']} ({f['class']}; predicted {f['before']} before, "
                      f"{f['after']} after)" for f in flips["files"]]
    return "\n".join(lines) + "\n"


def history_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The promotion as one entry of the checkpoint's history (plain data only)."""
    keys = ("method", "options", "train", "new_data", "holdout", "acc_before", "acc_after",
            "gain", "train_seconds", "date")
    entry = {"kind": "promote", "from": report["model"], **{k: report[k] for k in keys}}
    entry["nfr"] = report["negative_flips"]["nfr"]
    entry["negative_flips"] = report["negative_flips"]["count"]
    entry["positive_flips"] = report["positive_flips"]["count"]
    entry["per_class"] = report["per_class"]
    return entry


def promoted_checkpoint(ckpt: Checkpoint, model: nn.Module, report: dict[str, Any]
                        ) -> Checkpoint:
    """Same architecture, classes and normalisation; history grown by this promotion."""
    return of_model(model, ckpt.model, ckpt.model_options, ckpt.input_shape, ckpt.classes,
                    ckpt.mean, ckpt.std, config=ckpt.config,
                    history=[*ckpt.history, history_entry(report)], rng=rng_state())


# --- the promotion ------------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseResult:
    before: torch.Tensor  # holdout predictions of the checkpoint's model
    after: torch.Tensor  # ... and of the promoted model
    model: nn.Module  # the promoted model, as the method deploys it
    seconds: float  # training time, the method's set-up included
    fingerprint: str  # of the images trained on


def run_phase(request: PromoteRequest, ckpt: Checkpoint, config: Config, method: Method,
              new: Images, holdout: Images, device: torch.device) -> PhaseResult:
    """Phase 1 of 1 from the checkpoint's model, through the protocol's `train_phase`; the
    new images are the training set, the holdout the test set."""
    bundle = DataBundle("promote", list(ckpt.classes), new.samples(), holdout.samples(),
                        tuple(ckpt.input_shape), tuple(ckpt.mean), tuple(ckpt.std))
    previous = build_model(ckpt, request.model).to(device)
    channels_last, why = channels_last_choice(config.channels_last, bundle.input_shape,
                                              lambda: previous, device)
    if why:
        print(why, file=sys.stderr)
    source = DataSource(bundle, config.data, device, channels_last)
    if channels_last:
        previous = previous.to(memory_format=torch.channels_last)
    indices = np.arange(len(new))
    split = IILSplit(order_seed=0, base_fraction=0.0, n_phases=1,
                     fingerprint=bundle.fingerprint, base=indices, phases=(indices,))
    budget = method.budget(config.base, config.phase)
    with tqdm(total=budget.epochs, unit="epoch", dynamic_ncols=True,
              disable=None if request.show_progress else True) as bar:
        session = Session(config, source, device, Path(request.out).parent, bar,
                          channels_last=channels_last)
        before = session.predict(previous, "test", None)
        seconds, _ = train_phase(session, method, split, 1, previous, method.label, budget)
        promoted = method.deployed()
        after = session.predict(promoted, "test", None)
    return PhaseResult(before, after, promoted, seconds, bundle.fingerprint)


def build_report(request: PromoteRequest, config: Config, method: Method, device: torch.device,
                 new: Images, holdout: Images, phase: PhaseResult,
                 classes: list[str]) -> dict[str, Any]:
    scores = compare(phase.before, phase.after, holdout, classes)
    passed, reason = gate(scores["gain"], scores["negative_flips"]["nfr"], request.min_gain,
                          request.max_nfr)
    budget = method.budget(config.base, config.phase)
    held_out = (str(request.holdout) if request.holdout else
                f"{HOLDOUT_FRACTION:.0%} of {request.new_data} held out per class "
                f"(seed {request.seed}), never trained on")
    return {
        "model": str(request.model), "arch": request.arch, "out": str(request.out),
        "method": method.label, "options": options_of(method),
        "train": {"epochs": budget.epochs, "lr": budget.lr, "batch_size": budget.batch_size,
                  "crop_padding": config.data.crop_padding, "flip": config.data.flip,
                  "seed": config.seed, "device": str(device),
                  "overrides": list(request.overrides)},
        "new_data": {"folder": str(request.new_data), "images": len(new),
                     "fingerprint": phase.fingerprint},
        "holdout": {"folder": str(request.holdout or request.new_data), "source": held_out,
                    "images": len(holdout)},
        **scores,
        "gate": {"min_gain": request.min_gain, "max_nfr": request.max_nfr, "passed": passed,
                 "reason": reason},
        "train_seconds": phase.seconds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def promote(request: PromoteRequest) -> Outcome:
    """Runs one phase from the checkpoint's model, scores it, writes the reports and, when
    the gate passes, the promoted checkpoint (atomically). Every check of the input comes
    before any training. The whole promotion holds --out's lock (NEW_CKPT.lock beside it):
    a second promotion to the same --out is refused rather than racing this one."""
    with file_lock(request.out):
        return promote_locked(request)


def promote_locked(request: PromoteRequest) -> Outcome:
    check_outputs(request)
    ckpt = open_checkpoint(request)
    config = promotion_config(request, ckpt)
    method = promotion_method(config)
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    new, holdout = new_and_holdout(request, ckpt)
    phase = run_phase(request, ckpt, config, method, new, holdout, device)
    report = build_report(request, config, method, device, new, holdout, phase, ckpt.classes)
    json_file, md_file = report_files(request)
    passed = report["gate"]["passed"]
    if passed:  # the checkpoint first: a report never names a file that was not written
        new_ckpt = promoted_checkpoint(ckpt, phase.model, report)
        build_model(new_ckpt, request.out)  # rebuilds from the registry, or fails unwritten
        save_checkpoint(request.out, new_ckpt)
    atomic_write_json(json_file, report)
    atomic_write_text(md_file, report_markdown(report))
    return Outcome(report, passed, (json_file, md_file))
