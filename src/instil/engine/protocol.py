"""The instance-incremental protocol: for each order seed, M(0) then every method's phases.

Files written into the output folder: config.yaml (resolved), manifest-<seed>.json,
results.json (rewritten after every method, so an interrupted run keeps what finished:
engine.results), epochs.jsonl (a line per epoch, engine.epochs), summary.md, curves.png and
losses.png, and with log.tensorboard the same numbers under tensorboard/. One process
writes the folder at a time: a run holds its lock (instil.lock) from before its first read
to its end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from instil.checkpoint import of_model, save_checkpoint
from instil.config import Config, TrainConfig, base_budget, phase_budget, save_config
from instil.data import load_dataset
from instil.data.base import DataBundle
from instil.data.loaders import Batches, BatchPlan, DataSource
from instil.data.split import IILSplit, prepare_split
from instil.data.streams import plan_stream
from instil.engine import epochs as epoch_log
from instil.engine.cache import base_key, cache_root, load_base, save_base
from instil.engine.device import (
    derive_seed,
    describe_device,
    resolve_device,
    restore_rng,
    rng_state,
)
from instil.engine.distributed import (
    barrier,
    broadcast_object,
    broadcast_state,
    check_replicas,
    check_same,
    gather_interleaved,
    world,
)
from instil.engine.evaluate import predict
from instil.engine.fit import OnProgress, Progress, Speed, fit
from instil.engine.memory_format import channels_last_choice, meta_model
from instil.engine.precision import check_precision
from instil.engine.results import check_same_protocol, write_results
from instil.engine.resume import RunState, load_state, save_state, state_path
from instil.errors import InstilError
from instil.lock import file_lock_file, folder_lock, waiting_lock
from instil.methods import METHODS, create_method, options_for
from instil.methods.base import Method, PhaseContext
from instil.methods.finetune import Finetune
from instil.metrics import Reference, accuracy, phase_metrics, reference
from instil.models import create_model


def channels_last_of(config: Config, bundle: DataBundle, device: torch.device
                     ) -> tuple[bool, str]:
    """Whether this run's model and images go channels_last: the config's wish, unless the
    model cannot train in it on this device (engine.memory_format); with the one-line reason
    when the wish is refused. The config itself stays as the user wrote it (resume compares
    it)."""
    return channels_last_choice(
        config.channels_last, bundle.input_shape,
        lambda: meta_model(config.model.name, config.model.options, bundle.input_shape,
                           bundle.num_classes), device)


def model_for_config(config: Config, bundle: DataBundle, device: torch.device,
                     channels_last: bool) -> nn.Module:
    """The config's model for this data, on the device, in the memory format that
    `channels_last_of` chose (weights drawn from torch's current random state)."""
    model = create_model(config.model.name, bundle.input_shape, bundle.num_classes,
                         **config.model.options).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class Session:
    """What every phase of a run needs: the config, the data on the device, the progress bar."""

    config: Config
    source: DataSource
    device: torch.device
    out: Path
    bar: tqdm
    resume: bool = False  # go on from the states an interrupted run saved
    channels_last: bool = False  # the memory format of the models and images
    # Epochs trained by this process (base training included): what a resumed run records
    # as epochs_trained_here, the proof that it went on rather than started over.
    epochs_trained: int = 0
    board: epoch_log.Board | None = None  # TensorBoard writers (log.tensorboard, rank 0)
    # The folder whose epochs.jsonl gets every epoch's record; None: no file (a
    # promotion's session, whose folder is never written).
    record_to: Path | None = None
    # Where a promotion's session keeps the same records in memory (its caller writes them
    # beside its report); None: not kept.
    records: list[dict[str, Any]] | None = None

    def new_model(self, *seed_parts: object) -> nn.Module:
        torch.manual_seed(derive_seed(self.config.seed, *seed_parts))
        return model_for_config(self.config, self.source.bundle, self.device,
                                self.channels_last)

    def log(self, line: str) -> None:
        """One line per finished phase, above the bar, so that a log file shows progress
        (rank 0's only, under torchrun)."""
        if world().main:
            self.bar.write(line, file=sys.stderr)

    def eval_plan(self) -> BatchPlan:
        return BatchPlan(self.config.eval_batch_size, train=False)

    def predict(self, model: nn.Module, split: str, indices: np.ndarray | None) -> torch.Tensor:
        """Predictions in data order; under torchrun each rank scores every size-th sample
        and the ranks' shares are gathered, so every rank gets the same, whole answer."""
        w = world()
        if indices is None:
            indices = np.arange(len(getattr(self.source.bundle, split)))
        mine = indices[w.rank::w.size]
        local = predict(model, self.source.batches(split, mine, self.eval_plan()),
                        self.config.precision)
        return gather_interleaved(local, len(indices))

    def eval_part(self, split: IILSplit) -> tuple[str, np.ndarray | None]:
        """What acc_test is measured on: the test set, or the validation slice when tuning."""
        return ("train", split.validation) if len(split.validation) else ("test", None)

    def predict_eval(self, model: nn.Module, split: IILSplit) -> torch.Tensor:
        return self.predict(model, *self.eval_part(split))

    def eval_labels(self, split: IILSplit) -> torch.Tensor:
        return self.source.labels(*self.eval_part(split))


@dataclass(frozen=True)
class SourceData:
    """PhaseData over the run's training set (see methods.base.PhaseData)."""

    source: DataSource
    batch_size: int
    eval_batch_size: int
    seed: int

    @property
    def num_classes(self) -> int:
        return self.source.bundle.num_classes

    def batches(self, indices: np.ndarray, train: bool = False, batch_size: int | None = None,
                seed: int = 0) -> Batches:
        size = batch_size or (self.batch_size if train else self.eval_batch_size)
        if not train:
            return self.source.batches("train", indices, BatchPlan(size, train=False))
        # A method's own stream (seed != 0, e.g. er's memory batches) differs on every rank
        # under torchrun, as the engine's batches do; the phase's own stays alike on all.
        if seed:
            seed = derive_seed(self.seed, seed, world().rank)
        return self.source.batches("train", indices,
                                   BatchPlan(size, train=True, seed=seed or self.seed))

    def labels(self, indices: np.ndarray) -> torch.Tensor:
        return self.source.labels("train", indices)


# Below this, a run would fail while writing its results, models or resume state, perhaps
# hours in. The fmnist presets write a few MB; ResNet-18 runs ~45 MB a saved model (one per
# method and seed) and ~135 MB of resume state: a floor, not an estimate (a disk that fills
# later stops the run with one line, and --resume goes on once there is room).
MIN_FREE_MB = 500


def prepare_output(out: Path) -> None:
    """Fails before any training when the output folder cannot be written or its disk is
    (nearly) full."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A name of its own: under torchrun every rank probes the same folder.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
        free_mb = shutil.disk_usage(out).free / 2**20
    except OSError as e:
        raise InstilError(f"{out}: cannot write the output folder ({e.strerror}); "
                          "choose another --out") from None
    if free_mb < MIN_FREE_MB:
        raise InstilError(f"{out}: only {free_mb:.0f} MB free on its disk (a run needs at "
                          f"least {MIN_FREE_MB} MB); free some space or choose another --out")


def create_methods(config: Config) -> list[Method]:
    """Builds every method up front, so a typo in a name or option fails before training."""
    if not config.methods:
        raise InstilError("methods=[]: a run needs at least one method, e.g. --set "
                          "'methods=[finetune]'")
    methods = [method_for(config, name) for name in config.methods]
    for key in ("method_options", "method_budgets"):
        unknown = sorted(set(getattr(config, key)) - set(METHODS))
        if unknown:
            raise InstilError(f"{key}.{unknown[0]}: no such method; known: "
                              f"{', '.join(sorted(METHODS))}")
    # A preset's options for methods this run leaves out are checked too, so that a typo
    # in them fails now rather than in the run that lists the method.
    for name in set(config.method_options) - set(config.methods):
        method_for(config, name)
    for method in methods:
        method.check_budget(budget_of(config, method))
        if config.compile and not method.compiles():
            raise InstilError(f"compile: {method.label}'s loss cannot be compiled with its "
                              "options (dbd: set lean=false), or set compile=false")
    return methods


def budget_of(config: Config, method: Method) -> TrainConfig:
    """The budget `method` trains each phase with: the phase budget (the base budget for
    joint), changed for this method by method_budgets, then as the method adapts it (onpro's
    one pass)."""
    return method.budget(base_budget(config, method.label), phase_budget(config, method.label))


def method_for(config: Config, name: str) -> Method:
    return create_method(name, options_for(name, config.method_options))


def planned_epochs(config: Config, methods: list[Method]) -> int:
    per_seed = config.base.epochs
    for method in methods:
        if method.base_trainer() is not None:  # its own M(0), when not cached yet
            per_seed += config.base.epochs
        budget = budget_of(config, method)
        per_seed += budget.epochs * sum(method.runs_phase(t, config.n_phases)
                                        for t in range(1, config.n_phases + 1))
    return per_seed * len(config.order_seeds)


@dataclass(frozen=True)
class ModelFactory:
    """PhaseContext.new_model: a fresh model seeded by the phase (a class, not a lambda, so
    that a method holding its context can be saved for --resume)."""

    session: Session
    seed_parts: tuple

    def __call__(self) -> nn.Module:
        return self.session.new_model(*self.seed_parts)


def batch_seed(config: Config, split: IILSplit, tag: str, phase: int) -> int:
    return derive_seed(config.seed, split.order_seed, tag, phase, "batches")


def phase_context(session: Session, split: IILSplit, phase: int, tag: str,
                  budget: TrainConfig) -> PhaseContext:
    config = session.config
    return PhaseContext(phase, config.n_phases,
                        ModelFactory(session, (split.order_seed, tag, phase)), split,
                        SourceData(session.source, budget.batch_size, config.eval_batch_size,
                                   derive_seed(batch_seed(config, split, tag, phase),
                                               "method")), budget)


def epoch_saver(every_seconds: float, last_epoch: int,
                save: Callable[[Progress], None]) -> OnProgress:
    """Calls `save` after an epoch at most every `every_seconds` (pickling a large model
    costs), and never after `last_epoch`: the caller saves what supersedes it at once."""
    last_save = [time.perf_counter()]

    def on_progress(progress: Progress) -> None:
        if progress.epochs_done == last_epoch or \
                time.perf_counter() - last_save[0] < every_seconds:
            return
        save(progress)
        last_save[0] = time.perf_counter()

    return on_progress


def train_phase(session: Session, method: Method, split: IILSplit, phase: int,
                previous: nn.Module | None, tag: str, budget: TrainConfig,
                resume: Progress | None = None, on_progress: OnProgress | None = None,
                frozen: frozenset[str] = frozenset()) -> tuple[float, int]:
    """Runs one phase of `method` from `previous`; returns its training seconds (the
    method's set-up included) and the number of samples it trained on. With `resume`, the
    method is already inside the phase (restored by --resume) and training goes on.
    `frozen`: names of parameters of the trainable module that keep requires_grad False
    (a promotion keeps the caller's frozen layers frozen; the optimiser skips them)."""
    config = session.config
    started = time.perf_counter()
    w = world()
    if resume is None:
        torch.manual_seed(derive_seed(config.seed, split.order_seed, tag, phase))
        method.begin_phase(previous, phase_context(session, split, phase, tag, budget))
        for name, p in method.trainable().named_parameters():
            if name in frozen:
                p.requires_grad_(False)
        if w.distributed:  # training noise (dusting, mixing) of its own on every rank
            torch.manual_seed(derive_seed(config.seed, split.order_seed, tag, phase, w.rank))
    set_up = time.perf_counter() - started
    indices = method.train_indices(split, phase)
    plan = BatchPlan(budget.batch_size, train=True, seed=batch_seed(config, split, tag, phase),
                     rank=w.rank, world=w.size)
    batches = session.source.batches("train", indices, plan)
    where = f"{tag}, order seed {split.order_seed}, phase {phase}"
    session.bar.set_description(where)

    def on_epoch(epoch: int, loss: float) -> None:
        session.epochs_trained += 1
        session.bar.update(1)
        session.bar.set_postfix(loss=f"{loss:.4f}")

    def on_record(numbers: dict[str, float]) -> None:
        if not w.main:  # the numbers are all ranks' means: rank 0 records them
            return
        record = {"method": tag, "order_seed": split.order_seed, "phase": phase, **numbers}
        if session.records is not None:
            session.records.append(record)
        if session.record_to is not None:
            epoch_log.append(session.record_to, record)
        if session.board is not None:
            session.board.epoch(record, budget.epochs)

    speed = Speed(config.precision, config.compile, config.sync_batchnorm)
    result = fit(method, batches, budget, where, on_epoch, speed, resume, on_progress,
                 on_record)
    return set_up + result.seconds, len(indices)


def ran_on(device: torch.device) -> str:
    """The device, threads and processes behind a result, which its floating-point sums
    (and timings) depend on."""
    return f"{describe_device(device)}, {world().size} process(es)"


def base_model(session: Session, split: IILSplit, trainer: Method | None = None) -> nn.Module:
    """M(0) for this order seed: from the cache, or trained on D(0) and cached. `trainer`
    is a method's own base training (PODNet's cosine classifier); None: the shared M(0),
    plain fine-tuning of a fresh model."""
    config = session.config
    model = session.new_model(split.order_seed, "base", 0)
    tag = base_tag(trainer)
    path = cache_root(config.cache_dir) / "base" / f"{base_cache_key(config, split, trainer)}.pt"
    if trainer is not None:  # its architecture differs: load into what it trains
        model = trainer.architecture(model, base_context(session, split, tag))
    name = f"M(0) of order seed {split.order_seed}" + (f" ({tag})" if trainer else "")
    with cache_entry_lock(session, path, name):
        # Rank 0's cache decides (other machines may not share its disk); it sends the
        # weights.
        meta = broadcast_object(load_base(path, model, session.log) if world().main else None)
        if meta is not None:
            broadcast_state(model)
            session.bar.update(config.base.epochs)
            # The key leaves out the device and thread count (a cached model stays valid on
            # another machine), yet they change floating-point sums and so M(0) slightly:
            # the log says which one a run started from.
            session.log(f"{name} from the cache {path} (trained "
                        f"on {meta.get('trained_on', 'an unrecorded device')})")
            return model
        model, seconds = train_base(session, split, model, trainer)
        if world().main:
            save_base(path, model, {"order_seed": split.order_seed, "train_seconds": seconds,
                                    "trained_on": ran_on(session.device)})
    session.log(f"{name} cached as {path}")
    state_path(session.out, tag, split.order_seed, world()).unlink(missing_ok=True)
    return model


def base_cache_key(config: Config, split: IILSplit, trainer: Method | None = None) -> str:
    """The cache key of M(0): everything its training depends on (the data, D(0)'s indices,
    the model, the base budget, the seeds), not the device or thread count."""
    return base_key({
        "fingerprint": split.fingerprint, "model": config.model, "base": config.base,
        "data": (config.data.name, config.data.image_size, config.data.crop_padding,
                 config.data.flip, config.data.options),
        "seed": config.seed, "order_seed": split.order_seed,
        # Only when not fp32, so that the keys of models trained before the switch hold.
        **({"precision": config.precision} if config.precision != "fp32" else {}),
        # Only for a method's own base training, so that the shared M(0)'s keys hold.
        **({"trainer": base_tag(trainer), "trainer_options": options_of(trainer)}
           if trainer else {}),
    }, split.base)


def cache_entry_lock(session: Session, path: Path, name: str
                     ) -> contextlib.AbstractContextManager:
    """Rank 0 holds the cache entry `path` (<key>.pt.lock beside it) from its look-up to its
    save: another run that needs the same M(0) meanwhile waits, then loads it, rather than
    training it a second time."""
    if not world().main:
        return contextlib.nullcontext()
    lock = file_lock_file(path)
    return waiting_lock(lock, lambda holder: session.log(
        f"waiting for another process training {name} ({holder}); it will be loaded from "
        f"the cache once written (lock {lock})"))


def base_tag(trainer: Method | None) -> str:
    """The name of a base training in logs, resume states and cache keys."""
    return "base" if trainer is None else f"base-{trainer.label}"


def base_context(session: Session, split: IILSplit, tag: str) -> PhaseContext:
    return phase_context(session, split, 0, tag, session.config.base)


def train_base(session: Session, split: IILSplit, model: nn.Module,
               trainer: Method | None = None) -> tuple[nn.Module, float]:
    """Trains M(0) on D(0) by fine-tuning `model` (or with a method's own base `trainer`);
    with --resume, from the epoch an interrupted training saved last (base training is the
    longest phase of a run). Returns M(0) and the seconds this call trained."""
    config = session.config
    tag = base_tag(trainer)
    path = state_path(session.out, tag, split.order_seed, world())
    externals = {"session": session, "source": session.source}
    fresh = trainer or Finetune()
    state = interrupted_run(session, tag, split.order_seed, fresh) if session.resume \
        else None
    trainer = fresh if state is None else state.method
    if state is not None:
        restore_rng(state.rng)
    start_record(session, tag, split.order_seed, state)

    def saved(progress: Progress) -> None:
        save_state(path, RunState(config.to_dict(), trainer, [], 0, progress, rng_state()),
                   externals)

    epochs_before = session.epochs_trained
    seconds, _ = train_phase(session, trainer, split, 0, model, tag, config.base,
                             None if state is None else state.progress,
                             epoch_saver(config.state_every_seconds, config.base.epochs, saved))
    here = session.epochs_trained - epochs_before
    session.log(f"M(0) of order seed {split.order_seed} trained"
                + (f" ({tag})" if tag != "base" else "")
                + (f" (resumed: {here} of {config.base.epochs} epochs trained here)"
                   if state is not None else "") + f" in {seconds:.1f} s")
    return trainer.deployed(), seconds


def start_record(session: Session, tag: str, order_seed: int, state: RunState | None) -> None:
    """Drops the epochs.jsonl lines of (`tag`, `order_seed`) that this run will write again:
    all of them when it starts over, those after the point it resumes from otherwise."""
    if not world().main or session.record_to is None:
        return
    if state is None:
        keep = None
    elif state.progress is not None:
        keep = (state.phase, state.progress.epochs_done)
    else:  # after a finished phase: every epoch of it stays
        keep = (state.phase, 10**9)
    epoch_log.prune(session.record_to, tag, order_seed, keep)


def evaluate_phase(session: Session, method: Method, start: SeedStart,
                   last: bool) -> dict[str, Any]:
    """The deployed model's metrics after a phase, and those of the models it reports too
    (after every phase, or after the `last` only: config.also_evaluate_every_phase)."""
    split, ref = start.split, start.ref
    base_idx = split.part(0)
    test_labels = session.eval_labels(split)
    base_labels = session.source.labels("train", base_idx)
    deployed = method.deployed()
    metrics = phase_metrics(ref, session.predict_eval(deployed, split), test_labels,
                            session.predict(deployed, "train", base_idx), base_labels)
    metrics.update(shift_accuracy(session, deployed, split))
    metrics.update(method.phase_facts())
    others = method.also_evaluated() if last or session.config.also_evaluate_every_phase \
        else {}
    for name, model in others.items():
        metrics[f"{name}_acc_test"] = accuracy(session.predict_eval(model, split), test_labels)
        metrics[f"{name}_acc_base"] = accuracy(session.predict(model, "train", base_idx),
                                               base_labels)
    return metrics


def run_method(session: Session, method: Method, start: SeedStart,
               state: RunState | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Every phase of `method` from M(0), or from a saved `state` on; returns its record and
    its last deployed model. Saves its state for --resume after every epoch and phase."""
    config, split = session.config, start.split
    path = state_path(session.out, method.label, split.order_seed, world())
    budget = budget_of(config, method)
    externals = {"session": session, "source": session.source}
    if state is None:
        state = RunState(config.to_dict(), method, [], 0, None)
    method = state.method
    start_record(session, method.label, split.order_seed, state)
    started, wall_before = time.perf_counter(), state.wall_seconds
    epochs_before = session.epochs_trained

    def save() -> None:
        state.wall_seconds = wall_before + time.perf_counter() - started
        save_state(path, state, externals)

    previous = copy.deepcopy(start.m0) if state.phase == 0 else None
    for t in range(1, config.n_phases + 1):
        if t < state.phase or (t == state.phase and state.progress is None) or \
                not method.runs_phase(t, config.n_phases):
            continue
        resume = state.progress if t == state.phase else None
        if resume is not None:
            restore_rng(state.rng)
        elif state.phase > 0:
            previous = method.deployed()

        def saved(progress: Progress, t: int = t) -> None:
            state.phase, state.progress, state.rng = t, progress, rng_state()
            save()

        seconds, n_train = train_phase(session, method, split, t, previous, method.label,
                                       budget, resume,
                                       epoch_saver(config.state_every_seconds,
                                                   budget.epochs, saved))
        digest = check_replicas(method.deployed(), f"{method.label}, order seed "
                                                   f"{split.order_seed}, phase {t}")
        if world().distributed:
            session.log(f"{method.label} order seed {split.order_seed} phase {t}: the "
                        f"{world().size} ranks' deployed models agree (digest {digest})")
        metrics = evaluate_phase(session, method, start, last=t == config.n_phases)
        state.phases.append({"phase": t, **metrics, "train_seconds": seconds,
                             "n_train": n_train})
        if session.board is not None:
            session.board.phase(method.label, split.order_seed, t, state.phases[-1])
        # No generator state at a phase's end: every phase seeds its own at its start.
        state.phase, state.progress, state.rng = t, None, {}
        save()
        session.log(f"{method.label} order seed {split.order_seed} phase {t}: acc_test "
                    f"{metrics['acc_test']:.2f} pp {metrics['pp']:+.2f} f {metrics['f']:+.2f} "
                    f"nfr {metrics['nfr']:.2f} ({seconds:.1f} s)")
    deployed = method.deployed()
    ref = start.ref
    own = {"reference": {"name": start.reference, "acc_test": ref.acc_test,
                         "acc_base": ref.acc_base, **start.shift}} if start.reference else {}
    record = {"method": method.label, "order_seed": split.order_seed,
              "uses_old_data": method.uses_old_data,
              "parameters": sum(p.numel() for p in deployed.parameters()),
              "base": start.base_scores, **own,
              # The phase budget it trained with (method_budgets may change a method's).
              "budget": dataclasses.asdict(budget),
              "phases": state.phases,
              "wall_seconds": wall_before + time.perf_counter() - started,
              # Every phase's epochs in a whole run; after --resume only those that remained.
              "epochs_trained_here": session.epochs_trained - epochs_before,
              # Timings compare only between runs on the same machine and threads.
              "ran_on": ran_on(session.device)}
    return record, deployed


def save_model(session: Session, model: nn.Module, name: str,
               history: list[dict[str, Any]]) -> None:
    """An instil checkpoint of `model` under DIR/models/, the input of `instil promote`."""
    if not world().main:
        return
    config, bundle = session.config, session.source.bundle
    ckpt = of_model(model, config.model.name, config.model.options,
                    bundle.input_shape, bundle.classes, bundle.mean, bundle.std,
                    config=config.to_dict(), history=history, rng=rng_state())
    save_checkpoint(session.out / "models" / f"{name}.pt", ckpt)


def save_final_model(session: Session, model: nn.Module, m0: nn.Module, name: str,
                     history: list[dict[str, Any]]) -> None:
    """Saves a method's last model when it is still the config's architecture; methods that
    change it (DER's growing extractors, PODNet's cosine classifier) are logged, not saved,
    since their checkpoint could not be rebuilt from the model registry (nor iCaRL's
    nearest-mean classifier, whose class means are part of the deployed model)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in m0.state_dict().items()}:
        session.log(f"{name}: model not saved: its architecture is no longer "
                    f"{session.config.model.name}")
        return
    save_model(session, model, name, history)


@dataclass(frozen=True)
class SeedStart:
    """Where a method of one order seed starts: the split, M(0), and the scores its metrics
    are measured against (the shared M(0)'s, or its own reference's)."""

    split: IILSplit
    m0: nn.Module
    ref: Reference
    shift: dict[str, float]  # the reference's acc_shift on a sub-population-shift stream
    # The shared M(0)'s scores, recorded as every run's "base" (what the reports print).
    base_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    # Names the method's own reference when it is not the shared M(0) (iCaRL's nearest-mean
    # classifier on M(0), PODNet's own M(0)); "" for the shared one.
    reference: str = ""


@contextlib.contextmanager
def open_session(config: Config, out: Path, total_epochs: int,
                 show_progress: bool = True, resume: bool = False) -> Iterator[Session]:
    """Checks the output folder, loads the data onto the device, opens the progress bar."""
    out = Path(out)
    w = world()
    device = resolve_device(config.device, w.local_rank)
    check_precision(config.precision, device)
    if config.sync_batchnorm and device.type != "cuda":
        raise InstilError("sync_batchnorm needs CUDA devices (NCCL); drop it on the CPU")
    prepare_output(out)
    bundle = load_dataset(config.data)
    if w.main:
        save_config(config, out / "config.yaml")
    channels_last, why = channels_last_of(config, bundle, device)
    source = DataSource(bundle, config.data, device, channels_last)
    # disable=None turns the bar off when stderr is not a terminal (logs get one line a phase).
    with tqdm(total=total_epochs, unit="epoch", dynamic_ncols=True,
              disable=None if show_progress and w.main else True) as bar:
        session = Session(config, source, device, out, bar, resume, channels_last,
                          record_to=out)
        if config.log.tensorboard and w.main:
            session.board = epoch_log.Board(out)
        if why:
            session.log(why)
        try:
            yield session
        finally:
            if session.board is not None:
                session.board.close()


def start_seed(session: Session, order_seed: int) -> SeedStart:
    config, source = session.config, session.source
    bundle = source.bundle
    eligible = bundle.train.base_eligible
    stream = plan_stream(config.split, bundle, order_seed, config.seed)
    if not world().main:
        barrier()  # rank 0 writes the manifest first; the others then read it
    split = prepare_split(session.out, len(bundle.train), order_seed, config.base_fraction,
                          config.n_phases, bundle.fingerprint,
                          None if eligible is None else eligible.numpy(),
                          config.validation_fraction, bundle.train.labels.numpy(), stream)
    if world().main:
        barrier()
    m0 = base_model(session, split)
    if config.save_models:
        save_model(session, m0, f"m0-{order_seed}", [])
    ref, shift = scores_of(session, m0, split)
    return SeedStart(split, m0, ref, shift, {"acc_test": ref.acc_test,
                                             "acc_base": ref.acc_base, **shift})


def scores_of(session: Session, model: nn.Module, split: IILSplit
              ) -> tuple[Reference, dict[str, float]]:
    """What later models are measured against: `model`'s scores on the evaluation part and
    on D(0), and its acc_shift on a shift stream."""
    base_idx = split.part(0)
    ref = reference(session.predict_eval(model, split), session.eval_labels(split),
                    session.predict(model, "train", base_idx),
                    session.source.labels("train", base_idx))
    return ref, shift_accuracy(session, model, split)


def method_start(session: Session, method: Method, shared: SeedStart) -> SeedStart:
    """Where `method` starts: the shared M(0), or its own base training's M(0); measured
    against the shared M(0), or the reference the method names (METHOD.md §1's metrics
    compare a model with the M(0) it grew from, in the classifier it deploys)."""
    split, trainer = shared.split, method.base_trainer()
    m0 = shared.m0 if trainer is None else base_model(session, split, trainer)
    ctx = base_context(session, split, method.label)
    reference_model, name = method.reference_model(m0, ctx)
    if trainer is None and reference_model is shared.m0:
        return shared
    ref, shift = scores_of(session, reference_model, split)
    session.log(f"{method.label} order seed {split.order_seed}: measured against {name} "
                f"(acc_test {ref.acc_test:.2f}, acc_base {ref.acc_base:.2f})")
    return SeedStart(split, m0, ref, shift, shared.base_scores, name)


def shift_accuracy(session: Session, model: nn.Module, split: IILSplit) -> dict[str, float]:
    """{"acc_shift": accuracy on the test samples of the sub-populations D(0) lacked}, for a
    sub-population-shift stream scored on the test set; else {}."""
    if not len(split.shift_test) or len(split.validation):
        return {}
    labels = session.source.labels("test", split.shift_test)
    return {"acc_shift": accuracy(session.predict(model, "test", split.shift_test), labels)}


def options_of(method: Method) -> dict[str, Any]:
    """The method's effective options, defaults included, as recorded in results.json."""
    options = method.options
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def finished_runs(config: Config, out: Path, resume: bool) -> list[dict[str, Any]]:
    """The records of `out`/results.json to keep: with resume, those of the same protocol;
    without, none, and an existing run (finished or interrupted) is refused rather than
    overwritten."""
    path = Path(out) / "results.json"
    interrupted = sorted((Path(out) / "state").glob("*.pkl"))
    if not resume and (path.exists() or interrupted):
        found = path if path.exists() else interrupted[0]
        raise InstilError(f"{found} exists; add --resume to continue that run (finished "
                          "work is kept) or choose another --out")
    if not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
        old_config, records = previous["config"], previous["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InstilError(f"{path}: unreadable results ({e}); move it away to start over"
                          ) from None
    check_same_protocol(old_config, config, path, {r["method"] for r in records})
    left_out = sorted({f"{r['method']} (order seed {r['order_seed']})" for r in records
                       if r["method"] not in config.methods
                       or r["order_seed"] not in config.order_seeds})
    if left_out:  # rewriting results.json without them would lose them
        raise InstilError(f"{path}: holds runs that this config leaves out: "
                          f"{', '.join(left_out)}; a resume may add methods and order seeds, "
                          "not drop them: list them too, or use another --out")
    kept = []
    for record in records:
        options = options_of(method_for(config, record["method"]))
        # Records written before options were recorded pass on the config check alone.
        if record.get("options", options) != options:
            raise InstilError(f"{path}: {record['method']} ran with options "
                              f"{record['options']}, now {options} (changed defaults?); "
                              "use another --out")
        kept.append(record)
    return kept


def check_kept_base(kept: dict[tuple[str, int], dict[str, Any]], order_seed: int,
                    base: dict[str, float], out: Path) -> None:
    """The kept runs of `order_seed` must have started from the M(0) this resume starts the
    others from (the same scores): one retrained elsewhere (another machine's instruction
    set or thread count gives another model) would pair runs of different starts."""
    for (name, seed), record in kept.items():
        if seed == order_seed and record.get("base", base) != base:
            raise InstilError(
                f"{Path(out) / 'results.json'}: {name} on order seed {order_seed} started "
                f"from an M(0) scoring {record['base']}, this run's M(0) scores {base} (it "
                "was retrained since, e.g. on another machine); put that M(0)'s cached file "
                "back in the cache, or use another --out")


def interrupted_run(session: Session, name: str, order_seed: int,
                    fresh: Method) -> RunState | None:
    """The saved state of an unfinished run of `name` on `order_seed`, if there is one; its
    method must have the options of `fresh`, the one a new run would use."""
    path = state_path(session.out, name, order_seed, world())
    if not path.exists():
        return None
    state = load_state(path, {"session": session, "source": session.source})
    check_same_protocol(state.config, session.config, path, {name})
    if options_of(state.method) != options_of(fresh):
        raise InstilError(f"{path}: {name} ran with options {options_of(state.method)}; "
                          "they changed since; use another --out")
    session.log(f"{name} order seed {order_seed}: resumed after phase {state.phase}"
                + (f", epoch {state.progress.epochs_done}" if state.progress else ""))
    return state


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One writer per run folder: rank 0 holds `out`'s lock for the whole job (the other
    ranks never touch it), and tells the others whether it got it, so that a refused job
    stops on every rank at once rather than leaving them waiting for rank 0."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if world().main:
            try:
                stack.enter_context(folder_lock(out))
            except InstilError as e:
                refusal = str(e)
        refusal = broadcast_object(refusal)
        if refusal is not None:
            raise InstilError(refusal)
        yield


def run_protocol(config: Config, out: Path, show_progress: bool = True,
                 resume: bool = False) -> dict[str, Any]:
    """Runs every method on every order seed of `config` into the run folder `out`, which
    it holds locked against any other writer from before its first read to the end."""
    methods = create_methods(config)
    if config.log.tensorboard:
        epoch_log.check_tensorboard()
    with run_lock(out):
        return run_locked(config, out, methods, show_progress, resume)


def run_locked(config: Config, out: Path, methods: list[Method], show_progress: bool,
               resume: bool) -> dict[str, Any]:
    kept = finished_runs(config, out, resume) if world().main else None
    finished = {(r["method"], r["order_seed"]): r for r in broadcast_object(kept)}
    # Every record known so far, the kept ones included from the start: results.json is
    # rewritten after each run, and must never lose a kept record the loop has not reached.
    records = dict(finished)
    with open_session(config, out, planned_epochs(config, methods), show_progress,
                      resume) as session:
        for order_seed in config.order_seeds:
            start = None
            for name in config.methods:
                if (name, order_seed) in finished:
                    session.log(f"{name} order seed {order_seed}: kept from results.json")
                    continue
                if start is None:
                    start = start_seed(session, order_seed)
                    check_kept_base(finished, order_seed, start.base_scores, out)
                # A fresh method per order seed: no state leaks from one seed's run to another.
                method = method_for(config, name)
                state = interrupted_run(session, name, order_seed, method) if resume else None
                # Ranks killed at slightly different moments may have saved different epochs.
                check_same(None if state is None else (state.phase, state.progress and
                                                       state.progress.epochs_done),
                           f"{name} order seed {order_seed}: the point to resume from")
                run, model = run_method(session, method, method_start(session, method, start),
                                        state)
                if config.save_models:
                    save_final_model(session, model, start.m0, f"{name}-{order_seed}",
                                     run["phases"])
                run["options"] = options_of(method)
                records[(name, order_seed)] = run
                write_results(config, out, records, final=False, log=session.log)
                state_path(out, name, order_seed, world()).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder goes once the last state has
            (Path(out) / "state").rmdir()
        return write_results(config, out, records, final=True, log=session.log)
