"""A run folder's results.json: every finished run, rewritten after each method.

It is merged, never overwritten blindly. The run folder's lock keeps a second `instil run`
out, yet a writer that did not take it (an older instil, a disk whose locks do not reach
another machine) could still have written the file meanwhile: the runs it holds that this
process did not produce are kept, and the config (results.json's and config.yaml) then
lists the union of the methods and order seeds. A file of another protocol is never mixed
in: it is moved aside whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from instil.config import Config, from_dict, save_config
from instil.engine.distributed import world
from instil.errors import InstilError
from instil.io import atomic_write_json
from instil.methods import PER_METHOD_KEYS, settings_for
from instil.report import flatten, summarise, write_summary

Records = dict[tuple[str, int], dict[str, Any]]  # by (method, order seed)

# Config keys that may differ between a run and the one it resumes: they choose what runs,
# not how (a finished (method, order seed) pair is kept as it is), or what is logged.
RESUMABLE_KEYS = ("name", "methods", "order_seeds", "save_models", "state_every_seconds",
                  "log")
# PER_METHOD_KEYS must agree only for the methods the folder has run (a finished record or a
# saved state), as merge asks of the folders it joins, so that a method not yet run there
# may still be set up before it runs (e.g. a λ that a preset had to lower).


def check_same_protocol(old_config: dict[str, Any], config: Config, path: Path,
                        ran: Iterable[str]) -> None:
    """Refuses to resume from `path` when it was made with another protocol: any config key
    other than RESUMABLE_KEYS differing (keys added since read as their defaults), or the
    options or budget of a method it `ran` (a variant's inherited options included)."""
    try:
        before = from_dict(Config, old_config, "")
    except InstilError as e:
        raise InstilError(f"{path}: its config no longer loads ({e}); use another --out"
                          ) from None
    skipped = RESUMABLE_KEYS + PER_METHOD_KEYS
    new = flatten({k: v for k, v in config.to_dict().items() if k not in skipped})
    old = flatten({k: v for k, v in before.to_dict().items() if k not in skipped})
    differing = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
    if differing:
        raise InstilError(f"{path} was made with {differing[0]}={old.get(differing[0])!r}, "
                          f"this run has {new.get(differing[0])!r}; use another --out")
    for method in sorted(set(ran)):
        then = settings_for(method, before.method_options, before.method_budgets)
        now = settings_for(method, config.method_options, config.method_budgets)
        for key in PER_METHOD_KEYS:
            if then[key] != now[key]:
                raise InstilError(f"{path} ran {method} with {key}.{method}={then[key]!r}, "
                                  f"this run has {now[key]!r}; use another --out")


def in_order(config: Config, records: Records) -> list[dict[str, Any]]:
    """The records by order seed, then by method, as the config lists them."""
    return [records[(name, seed)] for seed in config.order_seeds for name in config.methods
            if (name, seed) in records]


def widened(config: Config, records: list[dict[str, Any]]) -> Config:
    """`config` listing also the methods and order seeds of `records`, after its own."""
    methods = list(dict.fromkeys([*config.methods, *(r["method"] for r in records)]))
    new_seeds = sorted({r["order_seed"] for r in records} - set(config.order_seeds))
    return dataclasses.replace(config, methods=methods,
                               order_seeds=[*config.order_seeds, *new_seeds])


def runs_of_others(path: Path, config: Config, ours: Records,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The runs `path` holds that are not among `ours`: another process wrote them. A file
    that is unreadable or of another protocol is moved aside (results-replaced-<time>.json)
    rather than lost or mixed in."""
    if not path.exists():
        return []
    try:
        previous = json.loads(path.read_text())
        old_config, records = previous["config"], previous["runs"]
        check_same_protocol(old_config, config, path, {r["method"] for r in records})
        others = [r for r in records if (r["method"], r["order_seed"]) not in ours]
    except (OSError, ValueError, KeyError, TypeError, InstilError) as e:
        aside = path.with_name(f"results-replaced-{time.strftime('%Y%m%d-%H%M%S')}.json")
        os.replace(path, aside)
        log(f"{path} was rewritten by another process, with runs that do not belong to this "
            f"run ({e}); it is kept as {aside}")
        return []
    if others:
        log(f"{path}: kept {len(others)} run(s) that another process wrote into it: "
            + ", ".join(f"{r['method']} (order seed {r['order_seed']})" for r in others))
    return others


def write_results(config: Config, out: Path, records: Records, final: bool,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Writes `out`/results.json with `records` and the runs another process put there
    (rank 0; the config.yaml too when those widen it), and when `final` summary.md and
    curves.png; returns the results."""
    path = Path(out) / "results.json"
    others = runs_of_others(path, config, records, log) if world().main else []
    if others:
        config = widened(config, others)
        records = {**{(r["method"], r["order_seed"]): r for r in others}, **records}
    runs = in_order(config, records)
    covered = all((m, s) in records for m in config.methods for s in config.order_seeds)
    scored_on = "validation" if config.validation_fraction > 0 else "test"
    results = {"config": config.to_dict(), "complete": final and covered,
               "acc_test_on": scored_on, "runs": runs, "summary": summarise(runs)}
    if not world().main:
        return results
    if others:
        save_config(config, Path(out) / "config.yaml")
    atomic_write_json(path, results)
    if final:
        write_summary(Path(out), config.name, runs)
    return results
