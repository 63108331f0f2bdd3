"""Checkpoints of a deployed model: tensors and plain data only, written atomically.

A checkpoint holds what it takes to use and promote the model again: the registry name and
options of its architecture, its input shape and normalisation, its class names in output
order, the weights, the config it was trained with, its metrics history and the RNG states.
It is read with `torch.load(weights_only=True)`, which admits tensors and plain containers
only, so a file that carries code is refused instead of executed.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instil.errors import InstilError, ModelError
from instil.io import atomic_write_bytes
from instil.models import create_model
from instil.models.zoo import check_arch, drop_auxiliary

FORMAT = "instil-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    model: str  # registry name, e.g. resnet_small
    model_options: dict[str, Any]
    input_shape: tuple[int, ...]
    classes: list[str]  # class names, in the order of the model's outputs
    mean: tuple[float, ...]  # input normalisation, per channel
    std: tuple[float, ...]
    state: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)


def of_model(model: nn.Module, model_name: str, model_options: dict[str, Any],
             input_shape: tuple[int, ...], classes: list[str], mean: tuple[float, ...],
             std: tuple[float, ...], **extra: Any) -> Checkpoint:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(model_name, dict(model_options), tuple(input_shape), list(classes),
                      tuple(mean), tuple(std), state, **extra)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Writes beside `path` and renames: a crash leaves the old file or the new, never half."""
    payload = {"format": FORMAT, "version": VERSION, **asdict(ckpt)}
    payload["input_shape"] = list(ckpt.input_shape)
    payload["mean"], payload["std"] = list(ckpt.mean), list(ckpt.std)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_tensors_only(path: Path, what: str) -> Any:
    """torch.load admitting tensors and plain containers only: a file that carries code is
    refused, never run."""
    if not path.is_file():
        raise InstilError(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InstilError(f"{path}: refused: the file holds pickled objects other than "
                          "tensors (it could run code); save a state dict instead") from None
    except Exception as e:  # a truncated or foreign file: the user can fix it, not us
        raise InstilError(f"{path}: unreadable {what} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    raw = load_tensors_only(path, "checkpoint")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InstilError(f"{path}: not an instil checkpoint; for a torchvision state dict "
                          "pass --arch and --classes")
    if raw.get("version") != VERSION:
        raise InstilError(f"{path}: checkpoint version {raw.get('version')}, this instil "
                          f"reads version {VERSION}; upgrade instil")
    fields = {k: raw[k] for k in Checkpoint.__dataclass_fields__ if k in raw}
    fields["input_shape"] = tuple(fields["input_shape"])
    fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
    return Checkpoint(**fields)


def build_model(ckpt: Checkpoint, where: Path | str) -> nn.Module:
    """The checkpoint's architecture with its weights; refuses weights of another model."""
    try:
        model = create_model(ckpt.model, ckpt.input_shape, len(ckpt.classes),
                             **ckpt.model_options)
    except InstilError as e:
        raise InstilError(f"{where}: {e}") from None
    load_weights(model, ckpt.state, where, describe_arch(ckpt), len(ckpt.classes))
    return model


def describe_arch(ckpt: Checkpoint) -> str:
    """The architecture as a user names it: torchvision's name for a "torchvision" model."""
    return ckpt.model_options.get("arch", ckpt.model) if ckpt.model == "torchvision" \
        else ckpt.model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: Path | str,
                 arch: str, num_classes: int | str = "?") -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {unexpected[:3]}" if unexpected else
                  f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, "
                  f"{arch} expects {tuple(own[wrong[0]].shape)}")
        raise ModelError(f"{where}: the weights are not those of a {arch} with {num_classes} "
                         f"classes ({detail}); check --arch / --classes or the file")
    model.load_state_dict(state)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# instil's own registry entries for these (models.resnet): a Classifier that keeps
# torchvision's body under `features` and its fc as `head`; their checkpoints exist.
WRAPPED_RESNETS = ("resnet18", "resnet34", "resnet50")


def from_torchvision(path: Path, arch: str, classes: list[str],
                     image_size: int = 224) -> Checkpoint:
    """A state dict of torchvision's model `arch` (any name of
    torchvision.models.list_models) as an instil checkpoint, with ImageNet normalisation."""
    path = Path(path)
    if arch not in WRAPPED_RESNETS:
        check_arch(arch)  # before reading: an unknown name is refused with the list
    state = load_tensors_only(path, "state dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                             for v in state.values()):
        raise InstilError(f"{path}: not a state dict (a mapping of names to tensors)")
    shape = (3, image_size, image_size)
    if arch in WRAPPED_RESNETS:
        renamed = {(f"head.{k[3:]}" if k.startswith("fc.") else f"features.{k}"): v
                   for k, v in state.items()}
        ckpt = Checkpoint(arch, {}, shape, list(classes), IMAGENET_MEAN, IMAGENET_STD, renamed)
    else:
        ckpt = Checkpoint("torchvision", {"arch": arch}, shape, list(classes), IMAGENET_MEAN,
                          IMAGENET_STD, drop_auxiliary(arch, state))
    build_model(ckpt, path)  # refuses another architecture or class count now, not later
    return ckpt


def read_class_names(path: Path) -> list[str]:
    """One class name per line, in the model's output order."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise InstilError(f"{path}: cannot read class names ({e.strerror})") from None
    if len(set(names)) != len(names) or not names:
        raise InstilError(f"{path}: class names must be non-empty and unique, one per line")
    return names
