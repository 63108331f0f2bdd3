"""`instil bench telemetry`: what the per-epoch record (epochs.jsonl's loss terms) costs a
training epoch, measured so that the machine's load cannot pass for it.

Two copies of a method train from the same model on the same batches through the engine's
own loop (`fit`): one as every run trains it, noting its loss terms each step, one with the
method's telemetry switched off (no terms noted, so the engine sums only the total loss,
which it always read once an epoch to stop on a NaN; DBD also skips its outer-sample count).
They take turns, one epoch each, for many rounds, the first arm alternating (ABBA), and the
figure is the median over rounds of the per-round ratio of epoch times: a slow spell of the
machine lands on both arms of a round, where two separate bench runs differ by 6-20% on this
2-core machine (docs/performance.md). The interval is a bootstrap of that median.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from instil.config import Config, TrainConfig
from instil.data import load_dataset
from instil.data.loaders import BatchPlan, DataSource
from instil.engine.device import describe_device, resolve_device
from instil.engine.fit import Speed, fit
from instil.engine.precision import check_precision
from instil.engine.protocol import channels_last_of, method_for, model_for_config
from instil.errors import InstilError
from instil.methods.base import Method, PhaseContext


def silenced(method: Method) -> Method:
    """`method` with its telemetry off: it declares and notes no terms (and DBD computes no
    outer-sample count for them). Instance attributes shadow the class's methods for this
    copy only."""
    method.note_terms = lambda **terms: None  # type: ignore[method-assign]
    method.term_names = lambda: ()  # type: ignore[method-assign]
    if hasattr(method, "clean_terms"):
        method.clean_terms = lambda teacher, y: {}  # type: ignore[attr-defined]
    return method


def epoch_seconds(method: Method, start: nn.Module, source: DataSource, indices: np.ndarray,
                  cfg: TrainConfig, speed: Speed) -> float:
    """Training seconds of one epoch of `method` from `start` over `indices` (batches in a
    fixed order, the same for every call)."""
    method.begin_phase(start, PhaseContext(1, 1, lambda: copy.deepcopy(start)))
    batches = source.batches("train", indices, BatchPlan(cfg.batch_size, train=True, seed=2))
    return fit(method, batches, cfg, "bench telemetry", speed=speed).seconds


def bootstrap_median(values: np.ndarray, draws: int = 2000, seed: int = 0
                     ) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of `values`."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(draws, len(values))), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def compare_arms(config: Config, name: str, model: nn.Module, source: DataSource,
                 indices: np.ndarray, cfg: TrainConfig, speed: Speed, rounds: int
                 ) -> dict[str, Any]:
    """`rounds` paired epochs of `name` with and without telemetry; the overhead is the
    median of (with / without − 1) over rounds."""
    arms = {"on": method_for(config, name), "off": silenced(method_for(config, name))}
    for method in arms.values():  # untimed: allocator, first-call costs
        epoch_seconds(method, model, source, indices[:2 * cfg.batch_size], cfg, speed)
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for arm in (("on", "off") if r % 2 == 0 else ("off", "on")):
            seconds[arm].append(epoch_seconds(arms[arm], model, source, indices, cfg, speed))
    on, off = np.array(seconds["on"]), np.array(seconds["off"])
    ratios = on / off - 1
    low, high = bootstrap_median(ratios)
    return {"method": name, "rounds": rounds, "steps": len(indices) // cfg.batch_size,
            "seconds_on": seconds["on"], "seconds_off": seconds["off"],
            "median_epoch_s_on": float(np.median(on)),
            "median_epoch_s_off": float(np.median(off)),
            "overhead": float(np.median(ratios)), "overhead_low": low, "overhead_high": high,
            "on_slower_rounds": int((ratios > 0).sum())}


def bench_telemetry(config: Config, methods: list[str], steps: int = 20, rounds: int = 20
                    ) -> dict[str, Any]:
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    speed = Speed(config.precision, config.compile)
    bundle = load_dataset(config.data)
    channels_last, _ = channels_last_of(config, bundle, device)
    source = DataSource(bundle, config.data, device, channels_last)
    cfg = dataclasses.replace(config.phase, epochs=1, warmup_epochs=0)
    if steps * cfg.batch_size > len(bundle.train):
        raise InstilError(f"{steps} steps of {cfg.batch_size} need more than the "
                          f"{len(bundle.train)} training images; lower --steps")
    torch.manual_seed(config.seed)
    model = model_for_config(config, bundle, device, channels_last)
    order = np.random.default_rng(config.seed).permutation(len(bundle.train))
    indices = order[:steps * cfg.batch_size]
    return {"preset": config.name, "device": describe_device(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch": cfg.batch_size,
            "methods": [compare_arms(config, name, model, source, indices, cfg, speed, rounds)
                        for name in methods]}


def telemetry_table(figures: dict[str, Any]) -> str:
    lines = [f"{figures['preset']} on {figures['device']}, {figures['threads']} thread(s), "
             f"batch {figures['batch']}",
             "| method | rounds × steps | epoch s, telemetry on | off | overhead (median) "
             "| 95% interval | rounds on slower |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in figures["methods"]:
        lines.append(f"| {m['method']} | {m['rounds']} × {m['steps']} | "
                     f"{m['median_epoch_s_on']:.3f} | {m['median_epoch_s_off']:.3f} | "
                     f"{100 * m['overhead']:+.2f}% | {100 * m['overhead_low']:+.2f}% to "
                     f"{100 * m['overhead_high']:+.2f}% | {m['on_slower_rounds']} of "
                     f"{m['rounds']} |")
    return "\n".join(lines)
