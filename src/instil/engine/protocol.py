"""The instance-incremental protocol: for each order seed, M(0) then every method's phases.

Files written into the output folder: config.yaml (resolved), manifest-<seed>.json,
results.json (rewritten after every method, so an interrupted run keeps what finished),
summary.md and curves.png.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from instil.config import Config, TrainConfig, save_config
from instil.data import load_dataset
from instil.data.loaders import BatchPlan, DataSource
from instil.data.split import IILSplit, prepare_split
from instil.engine.cache import base_key, cache_root, load_base, save_base
from instil.engine.device import derive_seed, resolve_device
from instil.engine.evaluate import predict
from instil.engine.fit import fit
from instil.errors import InstilError
from instil.io import atomic_write_json, atomic_write_text
from instil.methods import create_method
from instil.methods.base import Method, PhaseContext
from instil.methods.finetune import Finetune
from instil.metrics import Reference, accuracy, phase_metrics, reference
from instil.models import create_model
from instil.report import summarise, summary_markdown
from instil.viz.curves import plot_curves


@dataclass
class Session:
    """What every phase of a run needs: the config, the data on the device, the progress bar."""

    config: Config
    source: DataSource
    device: torch.device
    out: Path
    bar: tqdm

    def new_model(self, *seed_parts: object) -> nn.Module:
        torch.manual_seed(derive_seed(self.config.seed, *seed_parts))
        bundle = self.source.bundle
        model = create_model(self.config.model.name, bundle.input_shape, bundle.num_classes,
                             **self.config.model.options)
        model = model.to(self.device)
        if self.config.channels_last and len(bundle.input_shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        return model

    def log(self, line: str) -> None:
        """One line per finished phase, above the bar, so that a log file shows progress."""
        self.bar.write(line, file=sys.stderr)

    def eval_plan(self) -> BatchPlan:
        return BatchPlan(self.config.eval_batch_size, train=False)

    def predict(self, model: nn.Module, split: str, indices: np.ndarray | None) -> torch.Tensor:
        return predict(model, self.source.batches(split, indices, self.eval_plan()))


def prepare_output(out: Path) -> None:
    """Fails before any training when the output folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise InstilError(f"{out}: cannot write the output folder ({e.strerror}); "
                          "choose another --out") from None


def create_methods(config: Config) -> list[Method]:
    """Builds every method up front, so a typo in a name or option fails before training."""
    methods = [create_method(name, config.method_options.get(name)) for name in config.methods]
    for method in methods:
        method.check_budget(method.budget(config.base, config.phase))
    return methods


def planned_epochs(config: Config, methods: list[Method]) -> int:
    per_seed = config.base.epochs
    for method in methods:
        budget = method.budget(config.base, config.phase)
        per_seed += budget.epochs * sum(method.runs_phase(t, config.n_phases)
                                        for t in range(1, config.n_phases + 1))
    return per_seed * len(config.order_seeds)


def train_phase(session: Session, method: Method, split: IILSplit, phase: int,
                previous: nn.Module, tag: str, budget: TrainConfig) -> float:
    """Runs one phase of `method` from `previous`; returns its training seconds."""
    config = session.config
    torch.manual_seed(derive_seed(config.seed, split.order_seed, tag, phase))
    ctx = PhaseContext(phase, config.n_phases,
                       lambda: session.new_model(split.order_seed, tag, phase))
    method.begin_phase(previous, ctx)
    seed = derive_seed(config.seed, split.order_seed, tag, phase, "batches")
    batches = session.source.batches("train", method.train_indices(split, phase),
                                     BatchPlan(budget.batch_size, train=True, seed=seed))
    where = f"{tag}, order seed {split.order_seed}, phase {phase}"
    session.bar.set_description(where)

    def on_epoch(epoch: int, loss: float) -> None:
        session.bar.update(1)
        session.bar.set_postfix(loss=f"{loss:.4f}")

    return fit(method, batches, budget, where, on_epoch).seconds


def base_model(session: Session, split: IILSplit) -> nn.Module:
    """M(0) for this order seed: from the cache, or trained on D(0) and cached."""
    config = session.config
    model = session.new_model(split.order_seed, "base", 0)
    key = base_key({
        "fingerprint": split.fingerprint, "model": config.model, "base": config.base,
        "data": (config.data.name, config.data.image_size, config.data.crop_padding,
                 config.data.flip, config.data.options),
        "seed": config.seed, "order_seed": split.order_seed,
    }, split.base)
    path = cache_root(config.cache_dir) / "base" / f"{key}.pt"
    if load_base(path, model):
        session.bar.update(config.base.epochs)
        return model
    trainer = Finetune()
    seconds = train_phase(session, trainer, split, 0, model, "base", config.base)
    model = trainer.deployed()
    save_base(path, model, {"order_seed": split.order_seed, "train_seconds": seconds})
    session.log(f"M(0) of order seed {split.order_seed} trained in {seconds:.1f} s, "
                f"cached as {path}")
    return model


def run_method(session: Session, method: Method, split: IILSplit, m0: nn.Module,
               ref: Reference) -> dict[str, Any]:
    config = session.config
    base_idx = split.part(0)
    test_labels = session.source.labels("test")
    base_labels = session.source.labels("train", base_idx)
    previous = copy.deepcopy(m0)
    phases = []
    for t in range(1, config.n_phases + 1):
        if not method.runs_phase(t, config.n_phases):
            continue
        seconds = train_phase(session, method, split, t, previous, method.label,
                              method.budget(config.base, config.phase))
        previous = method.deployed()
        metrics = phase_metrics(ref, session.predict(previous, "test", None), test_labels,
                                session.predict(previous, "train", base_idx), base_labels)
        for name, model in method.also_evaluated().items():
            metrics[f"{name}_acc_test"] = accuracy(session.predict(model, "test", None),
                                                   test_labels)
            metrics[f"{name}_acc_base"] = accuracy(session.predict(model, "train", base_idx),
                                                   base_labels)
        phases.append({"phase": t, **metrics, "train_seconds": seconds,
                       "n_train": len(method.train_indices(split, t))})
        session.log(f"{method.label} order seed {split.order_seed} phase {t}: acc_test "
                    f"{metrics['acc_test']:.2f} pp {metrics['pp']:+.2f} f {metrics['f']:+.2f} "
                    f"nfr {metrics['nfr']:.2f} ({seconds:.1f} s)")
    return {"method": method.label, "order_seed": split.order_seed,
            "uses_old_data": method.uses_old_data,
            "parameters": sum(p.numel() for p in previous.parameters()),
            "base": {"acc_test": ref.acc_test, "acc_base": ref.acc_base},
            "phases": phases}


def write_results(session: Session, runs: list[dict[str, Any]], final: bool) -> dict[str, Any]:
    rows = summarise(runs)
    results = {"config": session.config.to_dict(), "complete": final, "runs": runs,
               "summary": rows}
    atomic_write_json(session.out / "results.json", results)
    if final:
        atomic_write_text(session.out / "summary.md",
                          summary_markdown(session.config.name, runs, rows))
        plot_curves(runs, session.out / "curves.png", session.config.name)
    return results


def run_protocol(config: Config, out: Path, show_progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    device = resolve_device(config.device)
    methods = create_methods(config)
    prepare_output(out)
    bundle = load_dataset(config.data)
    source = DataSource(bundle, config.data, device, config.channels_last)
    save_config(config, out / "config.yaml")
    eligible = bundle.train.base_eligible
    runs: list[dict[str, Any]] = []
    # disable=None turns the bar off when stderr is not a terminal (logs get one line a phase).
    with tqdm(total=planned_epochs(config, methods), unit="epoch", dynamic_ncols=True,
              disable=None if show_progress else True) as bar:
        session = Session(config, source, device, out, bar)
        for order_seed in config.order_seeds:
            split = prepare_split(out, len(bundle.train), order_seed, config.base_fraction,
                                  config.n_phases, bundle.fingerprint,
                                  None if eligible is None else eligible.numpy())
            m0 = base_model(session, split)
            base_idx = split.part(0)
            ref = reference(session.predict(m0, "test", None), source.labels("test"),
                            session.predict(m0, "train", base_idx),
                            source.labels("train", base_idx))
            for name in config.methods:
                # A fresh method per order seed: no state leaks from one seed's run to another.
                method = create_method(name, config.method_options.get(name))
                started = time.perf_counter()
                run = run_method(session, method, split, m0, ref)
                run["wall_seconds"] = time.perf_counter() - started
                runs.append(run)
                write_results(session, runs, final=False)
    return write_results(session, runs, final=True)
