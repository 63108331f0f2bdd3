"""Typed, frozen run configurations: loaded from YAML, overridden by `--set`, saved with results."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instil.errors import InstilError
from instil.io import atomic_write_text

SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class DataConfig:
    name: str = "fmnist"
    root: str | None = None
    # Images of file-based data sets are resized to this side; tensor data sets keep theirs.
    image_size: int = 224
    crop_padding: int = 4
    flip: bool = True
    workers: int = 4
    # Loader-specific keyword arguments (the toy set's size and drift, a folder's test split).
    options: dict[str, Any] = field(default_factory=dict)


STREAMS = ("iid", "class_skew", "subpop_shift")


@dataclass(frozen=True)
class SplitConfig:
    """The shape of the stream of new observations (data.streams)."""

    stream: str = "iid"  # the paper's random equal parts
    concentration: float = 1.0  # class_skew: Dirichlet concentration; 0.1 = one or two classes
    k: int = 4  # subpop_shift: sub-populations per class; D(0) lacks one of them

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise InstilError(f"split.stream={self.stream!r}: choose one of {', '.join(STREAMS)}")
        if self.concentration <= 0:
            raise InstilError(f"split.concentration={self.concentration}: must be positive")
        if self.k < 2:
            raise InstilError(f"split.k={self.k}: at least 2 sub-populations per class")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet_small"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """One training budget: base training (and joint retraining) has one, each phase another."""

    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InstilError(f"schedule '{self.schedule}': use one of {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise InstilError(f"epochs={self.epochs}, batch_size={self.batch_size}, "
                              f"warmup_epochs={self.warmup_epochs}: must be positive")
        if not self.lr > 0:
            raise InstilError(f"lr={self.lr}: must be positive")


@dataclass(frozen=True)
class LogConfig:
    """What a run logs beside its files (every run writes DIR/epochs.jsonl)."""

    # The per-epoch record and the per-phase metrics also as TensorBoard scalars, under
    # DIR/tensorboard/<method>-<order seed>; needs `pip install 'instil[tensorboard]'`.
    tensorboard: bool = False


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    methods: list[str] = field(default_factory=lambda: ["finetune", "joint"])
    order_seeds: list[int] = field(default_factory=lambda: [0])
    n_phases: int = 10
    base_fraction: float = 0.5
    # > 0 holds this fraction of the training set out of every part and reports its accuracy
    # in place of the test set's: for tuning, which must never see the test set.
    validation_fraction: float = 0.0
    device: str = "auto"
    # Seeds weight initialisation, shuffling and augmentation; the order seed seeds the split.
    seed: int = 0
    channels_last: bool = True
    # Mixed precision (engine.precision): fp32, bf16 or fp16 (CUDA only); compile: whether
    # torch.compile compiles each method's loss. Measure both with `instil bench speed`.
    precision: str = "fp32"
    compile: bool = False
    # Under torchrun: normalise with BatchNorm statistics over all ranks (CUDA only).
    sync_batchnorm: bool = False
    # Writes DIR/models/m0-<seed>.pt and <method>-<seed>.pt (instil checkpoints) of each run.
    save_models: bool = True
    # The resume state is saved after an epoch when this long has passed since the last save
    # (and after every phase); 0: after every epoch.
    state_every_seconds: float = 60.0
    # Smaller than a GPU would take: on 2 CPU cores large eval batches ran slower (cache
    # misses); `instil bench` (issue 5) is where this choice gets measured.
    eval_batch_size: int = 256
    # The models a method reports beside the one it deploys (dbd's student, iCaRL's CNN
    # head) are scored after every phase; false: after the last phase only, which is all the
    # reports read (each costs as much evaluation as the deployed model).
    also_evaluate_every_phase: bool = True
    # Where base models are cached; empty means $INSTIL_CACHE or ~/.cache/instil.
    cache_dir: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    base: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.1))
    phase: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=0.01))
    # Per-method options, validated against each method's own options dataclass.
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-method changes of the phase budget, e.g. {finetune: {lr: 0.003}}: a baseline's
    # tuned learning rate or epochs (docs/tuning.md); a method not named keeps `phase`.
    # joint, which retrains from scratch with `base`, has its `base` changed instead.
    method_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def phase_budget(config: Config, method: str) -> TrainConfig:
    """The phase budget of `method`: `phase` with the keys method_budgets.<method> changes."""
    return _changed(config.phase, config, method)


def base_budget(config: Config, method: str) -> TrainConfig:
    """The base budget as `method` sees it: `base` with the keys method_budgets.<method>
    changes. Only a method that retrains from scratch (joint) trains with it, so its
    method_budgets entry changes the budget it really uses instead of being ignored."""
    return _changed(config.base, config, method)


def _changed(budget: TrainConfig, config: Config, method: str) -> TrainConfig:
    changes = config.method_budgets.get(method)
    if not changes:
        return budget
    if not isinstance(changes, dict):
        raise InstilError(f"config key 'method_budgets.{method}' must be a mapping of phase "
                          f"keys, e.g. {{lr: 0.003}}, got {changes!r}")
    return from_dict(TrainConfig, {**_shallow(budget), **changes},
                     f"method_budgets.{method}")


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, "")


def presets_dir() -> Path:
    """The folder of the YAML presets: instil/presets/ of an installed wheel (pyproject.toml
    ships configs/ there), else configs/ of the source checkout that instil runs from."""
    packaged = Path(__file__).parent / "presets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def presets() -> dict[str, Path]:
    """Preset name -> its YAML file, sorted by name."""
    return {path.stem: path for path in sorted(presets_dir().glob("*.yaml"))}


def config_path(text: str | Path) -> Path:
    """A config argument of the command line: the path of a YAML file, or a preset's name
    (`fmnist-quick`). An existing file wins over a preset of the same name."""
    path = Path(text)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    known = presets()
    if path.name not in known:
        raise InstilError(f"{text}: neither a config file nor a preset; presets: "
                          f"{', '.join(known) or 'none found'} (instil list)")
    return known[path.name]


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise InstilError(f"{path}: cannot read config ({e.strerror}); check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InstilError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InstilError(f"{path}: a config must be a YAML mapping of keys to values")
    return data


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies one `--set a.b.c=value`; the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise InstilError(f"--set {item!r}: expected key=value, e.g. --set phase.epochs=5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Builds dataclass `cls` from a mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(raw, dict):
        raise InstilError(f"config '{where or 'top level'}' must be a mapping, got {raw!r}")
    types_ = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InstilError(f"unknown config key '{key}': known keys are {', '.join(sorted(known))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if dataclasses.is_dataclass(types_[f.name]) and isinstance(value, dict):
            # Keys not given keep the parent's default for this field (e.g. phase.lr=0.01),
            # not the defaults of the nested class.
            value = {**_shallow(_default(f)), **value}
        kwargs[f.name] = coerce(types_[f.name], value, f"{where}.{f.name}" if where else f.name)
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _shallow(instance: Any) -> dict[str, Any]:
    if instance is None:
        return {}
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        return coerce(next(t for t in options if t is not type(None)), value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        values = value if isinstance(value, list) else [value]
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(values)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InstilError(f"config key '{where}' must be a mapping, got {value!r}")
        return dict(value)
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and value is None:
        return ""
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise InstilError(f"config key '{where}' must be {tp.__name__}, got {value!r}")
    return value


def save_config(config: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
