"""Summaries of a run: per-method means with 95% intervals, tables for the terminal and docs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from instil.errors import InstilError
from instil.metrics import mean_ci95

METRICS = ("acc_test", "pp", "acc_base", "f", "f_rel", "nfr")
SHIFT = "acc_shift"  # only on a sub-population-shift stream (data.streams)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, over its order seeds, of the metrics after its last phase."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method and r["phases"]]
        if not mine:
            continue
        row: dict[str, Any] = {"method": method, "n_orders": len(mine),
                               "uses_old_data": mine[0]["uses_old_data"],
                               "final_phase": mine[0]["phases"][-1]["phase"],
                               "parameters": mine[0]["parameters"]}
        for key in METRICS + ((SHIFT,) if SHIFT in mine[0]["phases"][-1] else ()):
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean_ci95(
                [r["phases"][-1][key] for r in mine])
        row["train_seconds_mean"], _ = mean_ci95(
            [sum(p["train_seconds"] for p in r["phases"]) for r in mine])
        rows.append(row)
    return rows


def per_phase(runs: list[dict[str, Any]], method: str, key: str
              ) -> list[tuple[int, float, float]]:
    """(phase, mean, ci95) of one metric for every phase the method ran, across order seeds."""
    mine = [r for r in runs if r["method"] == method]
    phases = sorted({p["phase"] for r in mine for p in r["phases"]})
    out = []
    for t in phases:
        values = [p[key] for r in mine for p in r["phases"] if p["phase"] == t]
        mean, ci = mean_ci95(values)
        out.append((t, mean, ci))
    return out


def fmt(mean: float, ci: float) -> str:
    return f"{mean:.2f}" if math.isnan(ci) else f"{mean:.2f} ± {ci:.2f}"


def base_values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """M(0)'s `key` once per order seed (every method of a seed shares M(0)); [] when M(0)
    has no such metric."""
    seen = {r["order_seed"]: r["base"] for r in runs}
    return [b[key] for b in seen.values() if key in b]


def base_line(runs: list[dict[str, Any]]) -> str:
    acc_test = mean_ci95(base_values(runs, "acc_test"))
    acc_base = mean_ci95(base_values(runs, "acc_base"))
    seeds = len({r["order_seed"] for r in runs})
    shifts = base_values(runs, SHIFT)
    shift = f", {SHIFT} {fmt(*mean_ci95(shifts))}" if len(shifts) == seeds else ""
    return (f"M(0) over {seeds} order seed(s): acc_test {fmt(*acc_test)}, "
            f"acc_base {fmt(*acc_base)}{shift}")


def count(n: int) -> str:
    """A parameter count as people write it: 77.8k, 11.2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 1 layout: one row per method, whether it keeps old data, its
    parameters after the last phase, the final metrics (acc_shift too on a shift stream) and
    the training time of all phases; `seeds` says how many order seeds each row averages."""
    shift = any(f"{SHIFT}_mean" in r for r in rows)
    metrics = ["acc_test", "pp", "f", "f_rel", "nfr", *([SHIFT] if shift else [])]
    head = ["method", "old data", "params", "phase", "seeds", *metrics, "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [r["method"], "yes" if r["uses_old_data"] else "no", count(r["parameters"]),
                 str(r["final_phase"]), str(r["n_orders"]),
                 *(fmt(r[f"{k}_mean"], r[f"{k}_ci95"]) if f"{k}_mean" in r else "–"
                   for k in metrics), f"{r['train_seconds_mean']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def phase_table(runs: list[dict[str, Any]], methods: list[str], key: str) -> str:
    """One metric per phase: a row per phase, a column per method (a method that skips a
    phase, like joint, shows '–' there), so that many methods still read side by side."""
    head = f"| phase | {' | '.join(methods)} |\n" + "|---" * (1 + len(methods)) + "|\n"
    series = {m: {t: (mean, ci) for t, mean, ci in per_phase(runs, m, key)} for m in methods}
    phases = sorted({t for s in series.values() for t in s})
    lines = [f"| {t} | " + " | ".join(fmt(*series[m][t]) if t in series[m] else "–"
                                       for m in methods) + " |" for t in phases]
    return head + "\n".join(lines) + "\n"


PHASE_METRICS = {"acc_test": "acc_test", "pp": "pp (promotion over M(0))",
                 "f": "f (forgetting of D(0))",
                 SHIFT: f"{SHIFT} (the test images of the sub-populations D(0) lacked)"}


def also_evaluated_names(phase: dict[str, Any]) -> list[str]:
    """The models a phase reports beside the deployed one ("student", "head"): each has a
    <name>_acc_test and a <name>_acc_base."""
    names = [k.removesuffix("_acc_test") for k in phase if k.endswith("_acc_test")]
    return [name for name in names if f"{name}_acc_base" in phase]


def student_lines(runs: list[dict[str, Any]]) -> str:
    """For methods that deploy one model and also report another (dbd's student, iCaRL's
    CNN head beside its nearest-mean classifier): the other model's final acc_test and
    acc_base and the deployed model's lead over it."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in runs):
        last = [r["phases"][-1] for r in runs if r["method"] == method and r["phases"]]
        if not last:
            continue
        for name in also_evaluated_names(last[0]):
            if not all(f"{name}_acc_test" in p for p in last):
                continue
            cells = []
            for key in ("acc_test", "acc_base"):
                other = [p[f"{name}_{key}"] for p in last]
                lead = [p[key] - s for p, s in zip(last, other, strict=True)]
                cells.append(f"{key} {fmt(*mean_ci95(other))} (deployed − {name} "
                             f"{fmt(*mean_ci95(lead))})")
            lines.append(f"- {method}'s {name} after the last phase: " + ", ".join(cells))
    return "\n".join(lines) + "\n\n" if lines else ""


def reference_lines(runs: list[dict[str, Any]]) -> str:
    """For methods measured against a reference of their own instead of the shared M(0)
    (iCaRL's nearest-mean classifier on M(0), PODNet's own M(0)): what it is and scores."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in runs):
        refs = [r["reference"] for r in runs if r["method"] == method and "reference" in r]
        if not refs:
            continue
        scores = ", ".join(f"{key} {fmt(*mean_ci95([ref[key] for ref in refs]))}"
                           for key in ("acc_test", "acc_base"))
        lines.append(f"- {method}: pp, f and nfr are measured against {refs[0]['name']} "
                     f"({scores}), not the shared M(0)")
    return "\n".join(lines) + "\n\n" if lines else ""


def summary_markdown(config_name: str, runs: list[dict[str, Any]],
                     rows: list[dict[str, Any]], note: str = "", losses: bool = False) -> str:
    methods = [r["method"] for r in rows]
    shift = any(SHIFT in p for r in runs for p in r["phases"])
    tables = "\n".join(f"### {title}\n\n{phase_table(runs, methods, key)}"
                       for key, title in PHASE_METRICS.items() if key != SHIFT or shift)
    head = f"# {config_name}\n\n" + (f"{note}\n\n" if note else "")
    figures = ("Figures: [curves.png](curves.png) (metrics per phase)"
               + (", [losses.png](losses.png) (every loss term per epoch, from epochs.jsonl)"
                  if losses else "") + ".\n\n")
    return (f"{head}{base_line(runs)}\n\n"
            "## After the last phase (mean ± 95% CI over order seeds, percentage points)\n\n"
            f"{summary_table(rows)}\n"
            "Methods marked 'old data: yes' see samples of earlier parts (not IIL; reference).\n\n"
            f"{reference_lines(runs)}{student_lines(runs)}{figures}## Per phase\n\n{tables}")


def read_results(folder: Path) -> dict[str, Any]:
    """A run folder's results.json, or one line saying why it is not one."""
    import json

    path = folder / "results.json"
    try:
        result = json.loads(path.read_text())
        if not isinstance(result.get("runs"), list) or not isinstance(result.get("config"), dict):
            raise ValueError("no config or list of runs")
    except (OSError, ValueError, AttributeError) as e:
        raise InstilError(f"{path}: cannot read results ({e}); is it a run folder?") from None
    return result


def write_summary(folder: Path, config_name: str, runs: list[dict[str, Any]],
                  note: str = "") -> str:
    """Writes `folder`/summary.md, curves.png and (from epochs.jsonl, of the runs' methods and
    order seeds and their M(0)s) losses.png, and returns the summary's text."""
    from instil.engine.epochs import read_epochs
    from instil.io import atomic_write_text
    from instil.viz.curves import plot_curves  # matplotlib, only where a figure is drawn
    from instil.viz.losses import plot_losses

    seeds = {r["order_seed"] for r in runs}
    pairs = {(r["method"], r["order_seed"]) for r in runs}
    records = [e for e in read_epochs(folder) if (e["method"], e["order_seed"]) in pairs
               or (e["phase"] == 0 and e["order_seed"] in seeds)]
    text = summary_markdown(config_name, runs, summarise(runs), note, losses=bool(records))
    atomic_write_text(folder / "summary.md", text)
    plot_curves(runs, folder / "curves.png", config_name)
    if records:
        plot_losses(records, folder / "losses.png", config_name)
    return text


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            # An empty mapping adds no key, so {} and {dbd: {...}} differ only in the latter's.
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def compare_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per (run folder, method): the config keys that differ between the runs, then
    the final metrics. For sweeps: each run differs from the others by its `--set`s."""
    configs = {name: flatten(r["config"]) for name, r in results.items()}
    keys = sorted({k for c in configs.values() for k in c})
    # Which methods and seeds a run lists show in the method and seeds columns instead.
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1
               and k not in ("name", "methods", "order_seeds")]
    head = ["run", *varying, "method", "seeds", "acc_test", "pp", "f", "nfr",
            "student acc_test"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, result in results.items():
        for row in summarise(result["runs"]):
            student = mean_ci95([r["phases"][-1]["student_acc_test"] for r in result["runs"]
                                 if r["method"] == row["method"]
                                 and "student_acc_test" in r["phases"][-1]] or [math.nan])
            cells = [name, *(str(configs[name].get(k, "")) for k in varying), row["method"],
                     str(row["n_orders"]), fmt(row["acc_test_mean"], row["acc_test_ci95"]),
                     fmt(row["pp_mean"], row["pp_ci95"]), fmt(row["f_mean"], row["f_ci95"]),
                     fmt(row["nfr_mean"], row["nfr_ci95"]),
                     "–" if math.isnan(student[0]) else fmt(*student)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def labelled_runs(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of several folders, each method named 'folder: method' when there are
    several folders, so that one table can hold them all."""
    several = len(results) > 1
    return [{**r, "method": f"{name}: {r['method']}" if several else r["method"]}
            for name, result in results.items() for r in result["runs"]]


def per_phase_tables(results: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """A `phase_table` per metric over several runs: a column per method (see
    `labelled_runs`)."""
    runs = labelled_runs(results)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    return "\n".join(f"### {key}\n\n{phase_table(runs, methods, key)}" for key in keys)


def seed_table(runs: list[dict[str, Any]], methods: list[str], key: str) -> str:
    """One metric after each method's last phase: a row per order seed, a column per method
    ('–' where a method did not run that seed), and M(0)'s value first where every M(0)
    has the metric and each seed has one M(0) (runs of several folders may not share it).
    Means hide which seeds a method won; statements such as "below zero on every seed" are
    read here."""
    last = {(r["method"], r["order_seed"]): r["phases"][-1][key] for r in runs if r["phases"]}
    seeds = sorted({seed for _, seed in last})
    # None stands for an M(0) without the metric, so that it too rules the column out.
    bases = {seed: {r["base"].get(key) for r in runs if r["order_seed"] == seed}
             for seed in seeds}
    with_base = all(len(b) == 1 and None not in b for b in bases.values())
    head = ["order seed", *(["M(0)"] if with_base else []), *methods]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for seed in seeds:
        cells = [str(seed), *([f"{min(bases[seed]):.2f}"] if with_base else []),
                 *(f"{last[(m, seed)]:.2f}" if (m, seed) in last else "–" for m in methods)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_seed_tables(results: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """A `seed_table` per metric over several runs: a column per method (see
    `labelled_runs`)."""
    runs = labelled_runs(results)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    return "\n".join(f"### {key} after the last phase, per order seed\n\n"
                     f"{seed_table(runs, methods, key)}" for key in keys)


PAIRED = ("acc_test", "f", "nfr")


def paired_table(results: dict[str, dict[str, Any]], reference: str) -> str:
    """Every method against `reference` on the order seeds both ran: the mean ± 95% CI of
    the per-seed differences after the last phase (one seed shares M(0) and the data order,
    so a paired difference is much tighter than two unpaired means; Δpp equals Δacc_test),
    on how many of those seeds the method ends with the higher pp, and in how many phases
    the method's mean pp over those seeds beats the reference's (only when both ran the
    same phases)."""
    runs = labelled_runs(results)
    by = {(r["method"], r["order_seed"]): r for r in runs if r["phases"]}
    ref_seeds = {seed for method, seed in by if method == reference}
    if not ref_seeds:
        raise InstilError(f"--paired-to {reference}: no such method among these runs; one "
                          f"of {', '.join(dict.fromkeys(m for m, _ in by))}")
    head = ["method", "seeds", *(f"Δ {k}" for k in PAIRED), "seeds with higher pp",
            "phases with higher pp"]
    lines = [f"Against {reference} (method − {reference}, per order seed):", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for method in dict.fromkeys(m for m, _ in by):
        seeds = sorted(s for m, s in by if m == method and s in ref_seeds)
        if method == reference or not seeds:
            continue
        pairs = [(by[(method, s)]["phases"], by[(reference, s)]["phases"]) for s in seeds]
        cells = [method, str(len(seeds)),
                 *(fmt(*mean_ci95([mine[-1][k] - ref[-1][k] for mine, ref in pairs]))
                   for k in PAIRED),
                 f"{sum(mine[-1]['pp'] > ref[-1]['pp'] for mine, ref in pairs)} of {len(pairs)}",
                 phases_ahead(pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def phases_ahead(pairs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> str:
    """'k of n': the phases where the mean pp over the seeds is above the reference's."""
    numbers = {tuple(p["phase"] for p in phases) for pair in pairs for phases in pair}
    if len(numbers) != 1:
        return "–"  # other phases (another n_phases, or joint's single one)
    n = len(pairs[0][0])
    ahead = sum(mean_ci95([mine[i]["pp"] - ref[i]["pp"] for mine, ref in pairs])[0] > 0
                for i in range(n))
    return f"{ahead} of {n}"
