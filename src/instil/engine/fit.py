"""The one training loop, for base training and every method's phases."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from instil.config import TrainConfig
from instil.data.loaders import Batches
from instil.engine.distributed import (
    broadcast_buffers,
    data_parallel,
    from_sync_batchnorm,
    sum_over_ranks,
    to_sync_batchnorm,
    world,
)
from instil.engine.precision import autocast, grad_scaler
from instil.errors import InstilError
from instil.methods.base import Method

# How often (in steps) the loss is read back to the host: each read is a device sync.
LOG_EVERY = 50

OnEpoch = Callable[[int, float], None]
# Receives each finished epoch's record (see EpochSums.read): rank 0 writes it.
OnRecord = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class FitResult:
    seconds: float
    steps: int
    last_loss: float


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to zero or a constant rate."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def check_finite(loss: torch.Tensor | float, where: str) -> float:
    value = loss.item() if isinstance(loss, torch.Tensor) else loss
    if not math.isfinite(value):
        raise InstilError(f"{where}: the loss became {value}; lower the learning rate "
                          "(base.lr / phase.lr) or check the data")
    return value


@dataclass(frozen=True)
class Speed:
    """How the loop computes: the numeric precision and whether the loss is compiled."""

    precision: str = "fp32"
    compile: bool = False
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all ranks


@dataclass(frozen=True)
class Progress:
    """Where a phase's training stands after a finished epoch: what `fit` needs to go on
    from there exactly as if it had not stopped (the method's own state travels apart)."""

    epochs_done: int
    step: int
    seconds: float
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]


OnProgress = Callable[[Progress], None]


class EpochSums:
    """An epoch's loss terms summed on the device, step by step, and read back once at its
    end: the per-epoch record costs no device sync of its own (the total loss was always
    read once an epoch, to stop on a NaN)."""

    def __init__(self, device: torch.device, declared: tuple[str, ...] = ()) -> None:
        self.device = device
        self.declared = declared  # the method's term_names(): what its steps must note
        self.names: list[str] = []
        self.sums: list[torch.Tensor] = []
        self.steps = 0
        self.samples = 0

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], samples: int) -> None:
        step = {"loss": loss.detach(), **terms}
        if not self.names:
            if set(terms) != set(self.declared):
                raise ValueError(f"loss terms {sorted(terms)} noted, {sorted(self.declared)} "
                                 "declared by term_names(): a method must note what it "
                                 "declares")
            self.names = list(step)
            self.sums = [torch.zeros((), device=self.device) for _ in self.names]
        elif len(step) != len(self.names):
            raise ValueError(f"loss terms {sorted(step)} after {sorted(self.names)}: a method "
                             "must note the same terms every step")
        torch._foreach_add_(self.sums, [step[name] for name in self.names])  # one launch
        self.steps += 1
        self.samples += samples

    def read(self) -> tuple[dict[str, float], int]:
        """The terms' means over the epoch's steps and the samples trained on, over all
        ranks under torchrun (one collective, one read)."""
        counts = torch.tensor([self.steps, self.samples], dtype=torch.float32,
                              device=self.device)
        values = sum_over_ranks(torch.cat([torch.stack(self.sums), counts])).tolist()
        steps, samples = values[-2], values[-1]
        return {name: v / steps for name, v in zip(self.names, values)}, int(samples)


def fit(method: Method, batches: Batches, cfg: TrainConfig, where: str,
        on_epoch: OnEpoch | None = None, speed: Speed = Speed(),
        resume: Progress | None = None, on_progress: OnProgress | None = None,
        on_record: OnRecord | None = None) -> FitResult:
    """Trains `method.trainable()` for cfg.epochs epochs over `batches`; from `resume` on
    when given. `on_record` receives every epoch's record (epoch, lr, seconds, images/s and
    the loss terms' means), then `on_progress` the loop's state after it."""
    module = method.trainable()
    device = next(module.parameters()).device
    optimizer = method.optimizer(module, cfg) or make_optimizer(module, cfg)
    scaler = grad_scaler(device, speed.precision)
    w = world()
    swapped = to_sync_batchnorm(module) if w.distributed and speed.sync_batchnorm else []
    try:
        return train_epochs(method, module, optimizer, batches, cfg, where, on_epoch, speed,
                            resume, on_progress, device, scaler, on_record)
    finally:
        from_sync_batchnorm(swapped)


def train_epochs(method: Method, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batches: Batches, cfg: TrainConfig, where: str, on_epoch: OnEpoch | None,
                 speed: Speed, resume: Progress | None, on_progress: OnProgress | None,
                 device: torch.device, scaler: torch.amp.GradScaler,
                 on_record: OnRecord | None = None) -> FitResult:
    # Under torchrun, DDP wraps the method's loss with the trainable module (see
    # engine.distributed); alone, the loss is called as it is.
    w = world()
    forward = (data_parallel(module, method.loss, device, method.unused_parameters)
               if w.distributed else method.loss)
    # Per-step hooks that read the trainable module's buffers (DBD's per-step EMA) must see
    # one set of BatchNorm statistics, not each rank's own.
    sync_each_step = w.distributed and method.reads_buffers_each_step()
    # Compiling the whole loss lets the compiler fuse the method's several passes; the
    # method object itself stays plain Python (its hooks run between compiled calls).
    loss_of = torch.compile(forward) if speed.compile else forward
    steps_per_epoch = len(batches)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    first, step, done_before = 0, 0, 0.0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        scaler.load_state_dict(resume.scaler)
        first, step, done_before = resume.epochs_done, resume.step, resume.seconds
    start, last = time.perf_counter(), float("nan")
    for epoch in range(first, cfg.epochs):
        module.train()
        sums = EpochSums(device, method.term_names())
        lr = optimizer.param_groups[0]["lr"]  # the epoch's first step's
        began = time.perf_counter()
        for x, y in batches.epoch(epoch):
            with autocast(device, speed.precision):
                loss = loss_of(x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if sync_each_step:
                broadcast_buffers(module)
            method.after_step(step)
            sums.add(loss, method.terms(), len(y))
            step += 1
            if step % LOG_EVERY == 0:
                check_finite(loss, where)
        means, samples = sums.read()
        seconds = time.perf_counter() - began
        last = check_finite(means["loss"], f"{where}, epoch {epoch + 1}")
        broadcast_buffers(module)  # one set of BatchNorm statistics before the epoch hooks
        method.end_epoch(epoch)
        if on_record is not None:
            on_record({"epoch": epoch + 1, "lr": lr, "seconds": seconds,
                       "images_per_s": samples / seconds if seconds > 0 else math.nan,
                       **means, **method.epoch_facts()})
        if on_epoch is not None:
            on_epoch(epoch, last)
        if on_progress is not None:
            on_progress(Progress(epoch + 1, step, done_before + time.perf_counter() - start,
                                 optimizer.state_dict(), scheduler.state_dict(),
                                 scaler.state_dict()))
    method.end_phase()
    return FitResult(done_before + time.perf_counter() - start, step, last)
