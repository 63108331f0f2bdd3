"""`instil bench speed`: where the time of a run goes, measured in one process.

Every figure comes from timing real steps on the preset's model and batch size:
- the ceiling: forward + backward + optimiser step on one batch already in memory, repeated
  (no data path at all);
- base training, fine-tuning and DBD through the engine's own loop (`fit`) over the
  preset's data, with its augmentation: images per second, the data path's overhead
  (1 − pipeline / ceiling) and the ratio of a DBD epoch to a fine-tuning epoch;
- evaluation images per second;
- from those rates, the cost of joint retraining at the last phase against one DBD phase
  (the cost a user saves by promoting instead of retraining), as estimates;
- peak memory (the device's allocator on CUDA, the process's resident set on the CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instil.config import Config, TrainConfig
from instil.data import load_dataset
from instil.data.loaders import BatchPlan, DataSource
from instil.engine.device import describe_device, resolve_device
from instil.engine.distributed import world
from instil.engine.evaluate import predict
from instil.engine.fit import Speed, fit, make_optimizer
from instil.engine.precision import autocast, check_precision
from instil.engine.protocol import channels_last_of, method_for, model_for_config
from instil.errors import InstilError
from instil.methods.base import Method, PhaseContext
from instil.methods.finetune import Finetune


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return (time.perf_counter() - start) / steps


def ceiling(model: nn.Module, shape: tuple[int, ...], classes: int, batch: int, cfg: TrainConfig,
            speed: Speed, warmup: int, steps: int, device: torch.device,
            channels_last: bool) -> float:
    """Images per second of forward + backward + SGD step on one resident batch."""
    model = copy.deepcopy(model).train()
    x = torch.randn(batch, *shape, device=device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    optimizer = make_optimizer(model, cfg)

    def step() -> None:
        with autocast(device, speed.precision):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return batch / timed(step, warmup, steps, device)


def pipeline(method: Method, start: nn.Module, source: DataSource, indices: np.ndarray,
             cfg: TrainConfig, speed: Speed, warmup: int) -> float:
    """Images per second of one epoch of `method` over `indices` through the engine's loop,
    after a short untimed epoch (allocator, autotuning, compilation)."""
    ctx = PhaseContext(1, 1, lambda: copy.deepcopy(start))
    w = world()
    method.begin_phase(start, ctx)
    warm = indices[:warmup * cfg.batch_size * w.size]
    fit(method, source.batches("train", warm, BatchPlan(cfg.batch_size, True, 1, w.rank, w.size)),
        dataclasses.replace(cfg, epochs=1, warmup_epochs=0), "bench warm-up", speed=speed)
    method.begin_phase(start, ctx)
    batches = source.batches("train", indices,
                             BatchPlan(cfg.batch_size, train=True, seed=2, rank=w.rank,
                                       world=w.size))
    result = fit(method, batches, dataclasses.replace(cfg, epochs=1, warmup_epochs=0), "bench",
                 speed=speed)
    # All ranks together: each trained on its own share in the same time.
    return result.steps * cfg.batch_size * w.size / result.seconds


def protocol_estimate(config: Config, n_base: int, part: float, n_test: int, base: float,
                      finetune: float, dbd: float, eval_rate: float) -> float:
    """Seconds of the whole protocol with methods finetune, dbd and joint over every order
    seed, from the measured rates: M(0), the phases, joint at the last phase, and scoring
    the test set and D(0) after each phase (twice for dbd: teacher and student)."""
    phases = config.n_phases
    per_seed = (config.base.epochs * n_base / base
                + phases * config.phase.epochs * part * (1 / finetune + 1 / dbd)
                + config.base.epochs * (n_base + phases * part) / base
                + (1 + 3 * phases + 1) * (n_test + n_base) / eval_rate)
    return per_seed * len(config.order_seeds)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak, data set included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    """The median of several measurements: a 2-core machine's timings wander by ~10% from
    one run to the next (other processes, frequency), a median of 3 much less."""
    return float(np.median([measure() for _ in range(repeats)]))


def bench_speed(config: Config, steps: int = 40, warmup: int = 5,
                batch: int | None = None, repeats: int = 3) -> dict[str, Any]:
    device = resolve_device(config.device, world().local_rank)
    check_precision(config.precision, device)
    speed = Speed(config.precision, config.compile)
    bundle = load_dataset(config.data)
    channels_last, why = channels_last_of(config, bundle, device)
    if why:
        print(why, file=sys.stderr)
    source = DataSource(bundle, config.data, device, channels_last)
    base_cfg = dataclasses.replace(config.base, batch_size=batch or config.base.batch_size)
    phase_cfg = dataclasses.replace(config.phase, batch_size=batch or config.phase.batch_size)
    torch.manual_seed(config.seed)
    model = model_for_config(config, bundle, device, channels_last)
    order = np.random.default_rng(config.seed).permutation(len(bundle.train))
    n_images = steps * phase_cfg.batch_size * world().size
    if len(order) < n_images + warmup * phase_cfg.batch_size * world().size:
        raise InstilError(f"{steps} steps of {phase_cfg.batch_size} need more than the "
                          f"{len(order)} training images; lower --steps")
    indices = order[:n_images]

    top = median_of(repeats, lambda: ceiling(
        model, bundle.input_shape, bundle.num_classes, phase_cfg.batch_size, phase_cfg, speed,
        warmup, steps, device, channels_last))
    base_part = order[:steps * base_cfg.batch_size * world().size]
    base = median_of(repeats, lambda: pipeline(Finetune(), model, source, base_part, base_cfg,
                                               speed, warmup))
    finetune = median_of(repeats, lambda: pipeline(Finetune(), model, source, indices,
                                                   phase_cfg, speed, warmup))
    dbd = median_of(repeats, lambda: pipeline(method_for(config, "dbd"), model, source,
                                              indices, phase_cfg, speed, warmup))
    eval_batches = source.batches("train", order[:steps * config.eval_batch_size],
                                  BatchPlan(config.eval_batch_size, train=False))
    eval_s = 1 / median_of(repeats, lambda: 1 / timed(
        lambda: predict(model, eval_batches, config.precision), 1, 1, device))

    n_train = len(bundle.train)
    n_base = round(config.base_fraction * n_train)
    part = (n_train - n_base) / config.n_phases
    joint_s = config.base.epochs * n_train / base
    dbd_phase_s = config.phase.epochs * part / dbd
    eval_rate = len(order[:steps * config.eval_batch_size]) / eval_s
    protocol_s = protocol_estimate(config, n_base, part, len(bundle.test), base, finetune,
                                   dbd, eval_rate)
    return {
        "preset": config.name, "device": describe_device(device), "torch": torch.__version__,
        "model": config.model.name, "batch": phase_cfg.batch_size, "steps": steps,
        "repeats": repeats,
        "precision": config.precision, "channels_last": channels_last,
        "compile": config.compile, "processes": world().size,
        "ceiling_images_per_s": top,
        "base_images_per_s": base, "base_of_ceiling": base / top,
        "finetune_images_per_s": finetune, "data_path_overhead": 1 - finetune / top,
        "dbd_images_per_s": dbd, "dbd_vs_finetune_epoch_time": finetune / dbd,
        "eval_images_per_s": eval_rate,
        "protocol_s_estimate": protocol_s,
        "joint_at_last_phase_s_estimate": joint_s, "dbd_phase_s_estimate": dbd_phase_s,
        "joint_vs_dbd_phase": joint_s / dbd_phase_s,
        "peak_memory_mb": peak_memory_mb(device),
    }


def speed_table(r: dict[str, Any]) -> str:
    rows = [
        ("ceiling (resident batch, fwd+bwd+step)", f"{r['ceiling_images_per_s']:,.0f} img/s"),
        ("base training", f"{r['base_images_per_s']:,.0f} img/s "
                          f"({100 * r['base_of_ceiling']:.0f}% of the ceiling)"),
        ("fine-tuning epoch", f"{r['finetune_images_per_s']:,.0f} img/s "
                              f"(data path overhead {100 * r['data_path_overhead']:.1f}%)"),
        ("dbd epoch", f"{r['dbd_images_per_s']:,.0f} img/s "
                      f"({r['dbd_vs_finetune_epoch_time']:.2f}x a fine-tuning epoch's time)"),
        ("evaluation", f"{r['eval_images_per_s']:,.0f} img/s"),
        ("protocol: finetune, dbd, joint, all seeds (estimate)",
         f"{r['protocol_s_estimate'] / 60:,.1f} min"),
        ("joint at the last phase (estimate)", f"{r['joint_at_last_phase_s_estimate']:,.0f} s"),
        ("one dbd phase (estimate)", f"{r['dbd_phase_s_estimate']:,.0f} s "
                                     f"(joint costs {r['joint_vs_dbd_phase']:.1f}x)"),
        ("peak memory", f"{r['peak_memory_mb']:,.0f} MiB"),
    ]
    procs = f" · {r['processes']} processes (ceiling: one)" if r["processes"] > 1 else ""
    head = (f"{r['preset']} · {r['model']} · batch {r['batch']}{procs} · {r['precision']}"
            f"{' · channels_last' if r['channels_last'] else ''}"
            f"{' · compiled' if r['compile'] else ''} · {r['device']}\n")
    width = max(len(name) for name, _ in rows)
    return head + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
