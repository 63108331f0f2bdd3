"""Merging run folders that split one protocol by order seed into a single run folder.

Order seeds are independent (each has its own split, M(0) and method instances), so a
protocol can be run one seed per process or machine, with `--set order_seeds=[k]` and its own
`--out`, and merged afterwards. A merge is refused unless the folders ran the same protocol:
their configs, resolved by today's code (a key added since a folder ran takes its default,
which by this project's rule keeps the old behaviour), must agree on everything but
`order_seeds`, `methods` and the per-method settings, and no (method, order seed) may appear
twice. The method lists may differ because a method's run on one seed does not depend on
which other methods ran beside it (each starts from the seed's M(0)); a seed that ran fewer
methods adds to those methods' counts only. For the same reason a method's own settings
(`method_options.<m>`, `method_budgets.<m>`) must agree only between folders that merge a
run of that method, and the merged config keeps each merged method's settings: so a tuned
baseline rerun in a new folder merges with the untouched methods of an older one. The
merged folder is what `instil run` would have written: a results.json (listing its
sources), config.yaml, the manifests, summary.md and curves.png, written under the folder's
lock (instil.lock), as a run writes its own. Saved models stay in
their source folders, which results.json names. `methods` keeps only some methods (e.g. dbd
and its ablations out of folders that also ran the baselines), in the order given; with it
a single folder may be "merged", which copies those methods out of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from instil.config import Config, from_dict
from instil.engine.epochs import EPOCHS_FILE, read_epochs
from instil.errors import InstilError
from instil.io import atomic_write_json, atomic_write_text
from instil.lock import folder_lock
from instil.methods import PER_METHOD_KEYS, settings_for
from instil.report import flatten, read_results, summarise, write_summary

SEED_KEY = "order_seeds"
# Keys that may differ between merged folders: what ran, not how, and what was logged.
PER_FOLDER_KEYS = (SEED_KEY, "methods", "log")
# PER_METHOD_KEYS (settings of one method each) are compared only between folders that both
# merge that method.


def resolved(config: dict[str, Any], where: Path) -> dict[str, Any]:
    """`config` as today's code reads it: keys added since the folder ran take their
    defaults, so that a newer setting left at its default does not split one protocol."""
    try:
        return from_dict(Config, config, "").to_dict()
    except InstilError as error:
        raise InstilError(f"{where}: its config no longer reads ({error}); rerun it") from None


def protocol_of(config: dict[str, Any]) -> dict[str, Any]:
    """What two folders must share to be one protocol: the config without its seed and
    method lists and the per-method settings, flattened to dotted keys so that a refusal
    names the one setting that differs."""
    return flatten({k: v for k, v in config.items()
                    if k not in PER_FOLDER_KEYS + PER_METHOD_KEYS})


def settings_of(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The settings of `method` alone, flattened like protocol_of's; a variant's include
    what it inherits from its parent (method_options.dbd for dbd-nofl)."""
    return flatten(settings_for(method, config["method_options"], config["method_budgets"]))


def ran_methods(result: dict[str, Any]) -> list[str]:
    """The methods a folder has runs of, in its config's order: a folder stopped early
    lists methods it never ran, whose settings it never used."""
    ran = {run["method"] for run in result["runs"]}
    return [m for m in result["config"]["methods"] if m in ran]


def merged_settings(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each per-method key: a merged method's settings from a folder that ran it; a method
    that no folder merges keeps the first folder's entry (it changes nothing)."""
    ran = set(union_of_methods(results))
    first = results[0]["config"]
    merged = {key: {m: v for m, v in first[key].items() if m not in ran}
              for key in PER_METHOD_KEYS}
    for result in results:
        config = result["config"]
        for key in PER_METHOD_KEYS:
            for method in ran_methods(result):
                if config[key].get(method):
                    merged[key][method] = config[key][method]
    return merged


def union_of_methods(results: list[dict[str, Any]]) -> list[str]:
    """Every folder's methods, in the first folder's order, then the others' new ones."""
    methods: list[str] = []
    for result in results:
        methods += [m for m in result["config"]["methods"] if m not in methods]
    return methods


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return differing[0] if differing else None


def check_mergeable(folders: list[Path], results: list[dict[str, Any]]) -> None:
    first = protocol_of(results[0]["config"])
    for folder, result in zip(folders[1:], results[1:]):
        other = protocol_of(result["config"])
        key = first_difference(first, other)
        if key is not None:
            raise InstilError(f"{folder}: ran {key}={other.get(key)!r}, {folders[0]} ran "
                              f"{first.get(key)!r}; only runs of the same protocol merge")
    # A method's own settings must agree wherever it is merged from.
    settings: dict[str, tuple[Path, dict[str, Any]]] = {}
    for folder, result in zip(folders, results):
        for method in ran_methods(result):
            mine = settings_of(result["config"], method)
            if method not in settings:
                settings[method] = (folder, mine)
                continue
            source, theirs = settings[method]
            key = first_difference(theirs, mine)
            if key is not None:
                raise InstilError(f"{folder}: ran {method} with {key}={mine.get(key)!r}, "
                                  f"{source} with {theirs.get(key)!r}; runs of a method "
                                  f"merge only with the same settings")
    seen: dict[tuple[str, int], Path] = {}
    for folder, result in zip(folders, results):
        for run in result["runs"]:
            key = (run["method"], run["order_seed"])
            if key in seen:
                raise InstilError(f"{folder}: {key[0]} on order seed {key[1]} is also in "
                                  f"{seen[key]}; merge folders of different order seeds")
            seen[key] = folder
    check_one_base_per_seed(folders, results)


def check_one_base_per_seed(folders: list[Path], results: list[dict[str, Any]]) -> None:
    """The runs of one order seed must start from one M(0) (same scores), or a comparison
    paired per seed would compare different starts: an M(0) retrained with another thread
    count or torch differs in the last bits, and its scores show it."""
    bases: dict[int, tuple[Path, dict[str, Any]]] = {}
    for folder, result in zip(folders, results):
        for run in result["runs"]:
            # `base` scores the run's shared M(0), also where a method is measured against
            # a reference of its own (podnet-lsc's M(0), icarl's nearest-mean classifier).
            seed, base = run["order_seed"], run["base"]
            first = bases.setdefault(seed, (folder, base))
            if first[1] != base:
                raise InstilError(
                    f"{folder}: {run['method']} on order seed {seed} started from an M(0) "
                    f"scoring {base}, {first[0]} from one scoring {first[1]}; rerun it from "
                    f"the same M(0) (the same cached file, or one trained with the same "
                    f"thread count and torch)")


def merged_runs(config: dict[str, Any], results: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Every run, by order seed and then by method as the config lists them (as a run
    writes them)."""
    rank = {name: i for i, name in enumerate(config["methods"])}
    runs = [run for result in results for run in result["runs"]]
    return sorted(runs, key=lambda r: (r["order_seed"], rank.get(r["method"], len(rank))))


def only_methods(folders: list[Path], results: list[dict[str, Any]], methods: list[str]
                 ) -> list[dict[str, Any]]:
    """Each folder's results with only the runs and config entries of `methods`; a method
    that no folder lists is refused, since a typo would otherwise merge nothing of it."""
    listed = union_of_methods(results)
    for name in methods:
        if name not in listed:
            raise InstilError(f"--methods {name}: not a method of {', '.join(map(str, folders))}"
                              f"; they ran {', '.join(listed)}")
    kept = []
    for folder, result in zip(folders, results):
        own = [m for m in methods if m in result["config"]["methods"]]
        if not own:
            raise InstilError(f"{folder}: ran none of --methods {','.join(methods)}; "
                              f"leave it out of the merge")
        kept.append({**result, "config": {**result["config"], "methods": own},
                     "runs": [run for run in result["runs"] if run["method"] in own]})
    return kept


def covers_config(result: dict[str, Any]) -> bool:
    """Whether `result` holds a run of every method its config lists on every seed (a
    folder stopped during a method it is not merged for is complete for the others)."""
    done = {(run["method"], run["order_seed"]) for run in result["runs"]}
    return all((m, s) in done for m in result["config"]["methods"]
               for s in result["config"][SEED_KEY])


def merge_runs(folders: list[Path], out: Path, methods: list[str] | None = None
               ) -> dict[str, Any]:
    """Writes the merged run folder `out` (which must not hold a run yet) and returns its
    results; `methods` (None: all) picks the methods to merge."""
    if len(folders) < 2 and methods is None:
        raise InstilError("merge needs at least two run folders (or one with --methods, "
                          "to copy those methods out of it)")
    refuse_existing(out)
    results = [read_results(folder) for folder in folders]
    results = [{**r, "config": resolved(r["config"], folder)}
               for folder, r in zip(folders, results)]
    if methods is not None:
        methods = list(dict.fromkeys(methods))
        results = only_methods(folders, results, methods)
    check_mergeable(folders, results)
    seeds = sorted({seed for r in results for seed in r["config"][SEED_KEY]})
    config = {**results[0]["config"], **merged_settings(results), SEED_KEY: seeds,
              "methods": union_of_methods(results) if methods is None else methods}
    runs = merged_runs(config, results)
    # Checked before anything is written, so that a failed merge leaves no half folder.
    manifests = one_manifest_per_seed(folders, out)
    complete = all(r.get("complete", False) if methods is None else covers_config(r)
                   for r in results)
    merged = {"config": config, "complete": complete,
              "acc_test_on": results[0].get("acc_test_on", "test"), "runs": runs,
              "summary": summarise(runs), "merged_from": [str(f) for f in folders]}
    # One writer: a run or another merge into `out` meanwhile is refused, and the check
    # that `out` holds no run is made again under the lock.
    with folder_lock(out):
        refuse_existing(out)
        for manifest in manifests:
            shutil.copyfile(manifest, out / manifest.name)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        atomic_write_json(out / "results.json", merged)
        atomic_write_text(out / EPOCHS_FILE, "".join(
            json.dumps(e) + "\n" for folder, result in zip(folders, results)
            for e in epochs_of(folder, result)))
        note = "" if complete else \
            "Not every merged run is complete: this covers the runs results.json holds."
        write_summary(out, config["name"], runs, note)
    return merged


def one_manifest_per_seed(folders: list[Path], out: Path) -> list[Path]:
    """The folders' manifests (an order seed's split), one per name: two folders that ran
    different methods on one seed hold the same split, byte for byte; a different split
    under the same name is refused."""
    kept: dict[str, Path] = {}
    for folder in folders:
        for manifest in sorted(folder.glob("manifest-*.json")):
            other = kept.setdefault(manifest.name, manifest)
            if other != manifest and other.read_bytes() != manifest.read_bytes():
                raise InstilError(f"{out}: {other} and {manifest} split the data differently "
                                  f"under one name; only runs of the same protocol merge")
    return list(kept.values())


def epochs_of(folder: Path, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The epochs.jsonl lines of the runs merged from `folder`, and of its M(0)s."""
    pairs = {(r["method"], r["order_seed"]) for r in result["runs"]}
    seeds = {seed for _, seed in pairs}
    return [e for e in read_epochs(folder) if (e["method"], e["order_seed"]) in pairs
            or (e["phase"] == 0 and e["order_seed"] in seeds)]


def refuse_existing(out: Path) -> None:
    if (out / "results.json").exists():
        raise InstilError(f"{out / 'results.json'} exists; choose another --out")
