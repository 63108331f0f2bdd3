"""The command line: parses, builds a config, calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from instil.errors import InstilError

if TYPE_CHECKING:
    from instil.config import Config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instil", description="Instance-incremental learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the IIL protocol of a config")
    run.add_argument("config", type=Path,
                     help="a preset's name (instil list), e.g. fmnist-quick, or a YAML file")
    run.add_argument("--out", type=Path, help="output folder (default: runs/<config name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config key by dotted path (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: keep its finished method/seed pairs")
    sub.add_parser("list", help="list data sets, models, methods and presets")
    compare = sub.add_parser("compare", help="table of several runs (e.g. a sweep)")
    compare.add_argument("runs", type=Path, nargs="+", help="run folders with results.json")
    compare.add_argument("--methods", type=comma_list,
                         help="only these methods, comma-separated (e.g. finetune,dbd)")
    compare.add_argument("--order-seeds", type=comma_list,
                         help="only these order seeds, comma-separated: compare runs on the "
                              "seeds they share (e.g. 0,1)")
    compare.add_argument("--paired-to", metavar="METHOD",
                         help="also every method minus METHOD on the order seeds both ran "
                              "('folder: method' with several folders)")
    compare.add_argument("--per-phase", type=comma_list, default=[], metavar="METRICS",
                         help="also a per-phase table of each of these metrics, a column per "
                              "run and method (e.g. pp,f)")
    compare.add_argument("--per-seed", type=comma_list, default=[], metavar="METRICS",
                         help="also a table of each of these metrics after the last phase, "
                              "a row per order seed (e.g. pp,f)")
    report = sub.add_parser("report", help="rewrite a run's summary.md, curves.png and "
                                           "losses.png from its results.json (e.g. of an "
                                           "interrupted run)")
    report.add_argument("run", type=Path, help="a run folder with results.json")
    merge = sub.add_parser("merge", help="merge run folders of one protocol that ran "
                                         "different order seeds (e.g. one seed per GPU)")
    merge.add_argument("runs", type=Path, nargs="+", help="run folders with results.json")
    merge.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="the merged run folder (must not hold a run yet)")
    merge.add_argument("--methods", type=comma_list,
                       help="only these methods, comma-separated, in this order "
                            "(e.g. dbd,dbd-nofl)")
    dust = sub.add_parser("dust", help="figure: dusted images with M(0)'s predictions")
    dust.add_argument("config", type=Path, help="a preset's name or a YAML file")
    dust.add_argument("--out", type=Path, default=Path("runs/dust/dust.png"), help="PNG file")
    dust.add_argument("--sigmas", default="0,0.5,1,2,3",
                      help="noise levels, comma-separated (default 0,0.5,1,2,3)")
    dust.add_argument("--images", type=int, default=6, help="rows: one test image per class")
    boundary = sub.add_parser("boundary", help="figure: decision regions on the 2-D toy set")
    boundary.add_argument("config", type=Path, nargs="?", default=Path("toy2d"),
                          help="a preset's name or a YAML file (default: toy2d)")
    boundary.add_argument("--out", type=Path, default=Path("runs/boundary/boundary.png"),
                          help="PNG file")
    for figure in (dust, boundary):
        figure.add_argument("--set", dest="overrides", action="append", default=[],
                            metavar="KEY=VALUE", help="override a config key (repeatable)")
        figure.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch = sub.add_parser("fetch", help="make a data set available (fmnist)")
    fetch.add_argument("dataset", choices=["fmnist"])
    fetch.add_argument("--root", type=Path, default=Path("data"),
                       help="folder for a download when no system copy exists (default: data)")
    bench = sub.add_parser("bench", help="measure speed (instil bench speed)")
    kind = bench.add_subparsers(dest="bench", required=True)
    speed = kind.add_parser("speed", help="images/s of the ceiling, base, finetune, dbd, eval")
    speed.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    speed.add_argument("--steps", type=int, default=40, help="timed steps per figure")
    speed.add_argument("--repeats", type=int, default=3,
                       help="measurements per figure; the median is reported")
    tele = kind.add_parser("telemetry", help="what the per-epoch record costs an epoch: "
                           "paired epochs with and without it, alternating")
    tele.add_argument("--methods", default="finetune,lwf,dbd",
                      help="comma-separated methods (default: finetune,lwf,dbd)")
    tele.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    tele.add_argument("--rounds", type=int, default=20,
                      help="paired epochs per method; the median ratio is reported")
    for bench_kind in (speed, tele):
        bench_kind.add_argument("--preset", dest="config", type=Path,
                                default=Path("fmnist-iil10"),
                                help="a preset's name or a YAML file (default: fmnist-iil10)")
        bench_kind.add_argument("--device", help="cpu, cuda, ... (default: the preset's)")
        bench_kind.add_argument("--json", type=Path,
                                help="also write the figures to this JSON file")
        bench_kind.add_argument("--set", dest="overrides", action="append", default=[],
                                help="override a config key, e.g. --set precision=bf16")
    add_promote_parsers(sub)
    return parser


def add_promote_parsers(sub: argparse._SubParsersAction) -> None:
    """`instil promote` and `instil images` (the image folders it reads)."""
    promote = sub.add_parser("promote", help="promote a deployed model with new labelled images")
    promote.add_argument("--model", type=Path, required=True, metavar="CKPT",
                         help="an instil checkpoint, or a torchvision state dict with --arch")
    promote.add_argument("--new-data", type=Path, required=True, metavar="DIR",
                         help="new labelled images, one sub-folder per class of the model")
    promote.add_argument("--holdout", type=Path, metavar="DIR",
                         help="images scored before and after (default: 20%% of --new-data)")
    promote.add_argument("--method", default="dbd", help="an IIL method without old data "
                         "(default dbd)")
    promote.add_argument("--out", type=Path, required=True, metavar="NEW_CKPT",
                         help="the promoted checkpoint, written only if the gate passes")
    promote.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    promote.add_argument("--min-gain", type=float, default=0.0, metavar="X",
                         help="least holdout accuracy gain, in points (default 0.0)")
    promote.add_argument("--max-nfr", type=float, default=2.0, metavar="Y",
                         help="most negative flips, in %% of the holdout (default 2.0)")
    promote.add_argument("--arch", help="architecture of a torchvision state dict: any name "
                         "of torchvision.models.list_models(), e.g. mobilenet_v3_small")
    promote.add_argument("--classes", type=Path, metavar="FILE",
                         help="class names of a torchvision state dict, one per line")
    promote.add_argument("--image-size", type=int, default=224,
                         help="input size of a torchvision state dict (default 224)")
    promote.add_argument("--epochs", type=int, default=12, help="default 12")
    promote.add_argument("--lr", type=float, default=0.01, help="default 0.01")
    promote.add_argument("--batch-size", type=int, default=64, help="default 64")
    promote.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE",
                         help="a config key, e.g. method_options.dbd.sigma=0.5 (repeatable)")
    promote.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    promote.add_argument("--report", type=Path, metavar="DIR",
                         help="folder of the reports (default: beside --out)")
    promote.add_argument("--seed", type=int, default=0, help="default 0")
    promote.add_argument("--no-progress", action="store_true", help="no progress bar")
    images = sub.add_parser("images", help="write a data set's images as PNG class folders")
    images.add_argument("dataset", choices=["fmnist"])
    images.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="a new or empty folder; images go to DIR/<class>/")
    images.add_argument("--split", choices=["train", "test"], required=True)
    images.add_argument("--count", type=int, required=True, help="images, drawn at random")
    images.add_argument("--seed", type=int, default=0, help="default 0")
    images.add_argument("--root", type=Path,
                        help="folder of the IDX files (default: $INSTIL_DATA, the system copy)")


def cmd_promote(args: argparse.Namespace) -> int:
    from instil.promotion.files import PromoteRequest, promote_checkpoint
    from instil.promotion.report import report_markdown

    request = PromoteRequest(
        model=args.model, new_data=args.new_data, out=args.out, holdout=args.holdout,
        method=args.method, arch=args.arch, classes=args.classes, image_size=args.image_size,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        overrides=tuple(args.overrides), device=args.device, seed=args.seed,
        min_gain=args.min_gain, max_nfr=args.max_nfr, report_dir=args.report,
        overwrite=args.overwrite, show_progress=not args.no_progress)
    outcome = promote_checkpoint(request)
    print(report_markdown(outcome.report), end="")
    reports = ", ".join(str(p) for p in outcome.report_files)
    if not outcome.passed:
        print(f"instil: not promoted: {outcome.report['gate']['reason']}; {args.out} not "
              f"written (reports: {reports})", file=sys.stderr)
        return 3
    print(f"wrote {args.out} and {reports}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from instil.config import DataConfig
    from instil.data import load_dataset
    from instil.data.export import write_class_folders

    bundle = load_dataset(DataConfig(name=args.dataset,
                                     root=str(args.root) if args.root else None))
    written = write_class_folders(args.out, bundle, args.split, args.count, args.seed)
    print(f"wrote {sum(written.values())} {args.split} images of {args.dataset} to {args.out}: "
          + ", ".join(f"{name} {written[name]}" for name in bundle.classes if written[name]))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from instil.bench import bench_speed, speed_table
    from instil.engine import distributed
    from instil.engine.device import resolve_device
    from instil.io import atomic_write_json

    config = load_named(args)
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    if args.bench == "telemetry":
        return cmd_bench_telemetry(args, config)
    if args.steps < 1 or args.repeats < 1 or (args.batch is not None and args.batch < 2):
        raise InstilError("--steps and --repeats must be >= 1 and --batch >= 2 (BatchNorm "
                          "needs two)")
    w = distributed.start(resolve_device(config.device).type)
    try:
        figures = bench_speed(config, steps=args.steps, batch=args.batch,
                              repeats=args.repeats)
    finally:
        distributed.stop()
    if not w.main:
        return 0
    print(speed_table(figures))
    if args.json:
        atomic_write_json(args.json, {"config": config.to_dict(), "figures": figures})
        print(f"wrote {args.json}")
    return 0


def cmd_bench_telemetry(args: argparse.Namespace, config: Config) -> int:
    from instil.bench_telemetry import bench_telemetry, telemetry_table
    from instil.io import atomic_write_json
    from instil.methods import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InstilError(f"--methods {args.methods}: unknown {', '.join(unknown) or '(none)'}"
                          f"; methods: {', '.join(sorted(METHODS))}")
    if args.steps < 2 or args.rounds < 2:
        raise InstilError("--steps and --rounds must be >= 2")
    figures = bench_telemetry(config, methods, steps=args.steps, rounds=args.rounds)
    print(telemetry_table(figures))
    if args.json:
        atomic_write_json(args.json, {"config": config.to_dict(), "figures": figures})
        print(f"wrote {args.json}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from instil.engine import distributed
    from instil.engine.device import resolve_device
    from instil.engine.protocol import run_protocol
    from instil.report import base_line, summary_table

    config = load_named(args)
    out = args.out or Path("runs") / config.name
    w = distributed.start(resolve_device(config.device).type)
    try:
        results = run_protocol(config, out, show_progress=not args.no_progress,
                               resume=args.resume)
    finally:
        distributed.stop()
    if not w.main:
        return 0
    print(base_line(results["runs"]))
    print(summary_table(results["summary"]))
    print(f"wrote {out}/results.json, summary.md, curves.png, losses.png")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from instil.config import presets, presets_dir
    from instil.data import DATASETS
    from instil.methods import METHODS, describe
    from instil.models import MODELS

    print("data sets:")
    for name, (_, description) in sorted(DATASETS.items()):
        print(f"  {name:14s} {description}")
    print("models:")
    for name, (_, description) in sorted(MODELS.items()):
        print(f"  {name:14s} {description}")
    print("methods:")
    for name in sorted(METHODS):
        print(f"  {name:14s} {describe(name)}")
    print(f"presets ({presets_dir()}; instil run NAME):")
    for name in presets():
        print(f"  {name}")
    return 0


def load_named(args: argparse.Namespace):
    from instil.config import config_path, load_config

    path = config_path(args.config)
    config = load_config(path, args.overrides)
    if config.name == "custom":
        config = dataclasses.replace(config, name=path.stem)
    return config


def cmd_dust(args: argparse.Namespace) -> int:
    from instil.viz.dust import dust_figure

    try:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    except ValueError:
        raise InstilError(f"--sigmas {args.sigmas!r}: expected numbers like 0,0.5,1,2") from None
    dust_figure(load_named(args), args.out, sigmas, args.images, not args.no_progress)
    print(f"wrote {args.out}")
    return 0


def cmd_boundary(args: argparse.Namespace) -> int:
    from instil.viz.boundary import boundary_figure

    accuracy = boundary_figure(load_named(args), args.out, not args.no_progress)
    print(", ".join(f"{k}: {v:.1f}%" for k, v in accuracy.items()))
    print(f"wrote {args.out}")
    return 0


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def selected_runs(result: dict, methods: list[str] | None, seeds: list[str] | None,
                  path: Path) -> dict:
    """`result` with only the runs of `methods` and order `seeds` (None: all)."""
    runs = [r for r in result["runs"] if (methods is None or r["method"] in methods)
            and (seeds is None or str(r["order_seed"]) in seeds)]
    if not runs:
        raise InstilError(f"{path}: no run of methods {methods or 'any'} on order seeds "
                          f"{seeds or 'any'}; check --methods and --order-seeds")
    return {**result, "runs": runs}


def cmd_report(args: argparse.Namespace) -> int:
    from instil.report import read_results, write_summary

    result = read_results(args.run)
    runs = [r for r in result["runs"] if r["phases"]]
    if not runs:
        raise InstilError(f"{args.run / 'results.json'}: holds no finished run yet")
    name = result.get("config", {}).get("name", args.run.name)
    # An interrupted run: say so, since its methods may cover different seeds.
    note = "" if result.get("complete", False) else \
        "The run is not complete: this covers the runs results.json holds (see the seeds column)."
    print(write_summary(args.run, name, runs, note), end="")
    print(f"\nwrote {args.run / 'summary.md'}, curves.png"
          + (", losses.png" if (args.run / "epochs.jsonl").exists() else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from instil.report import (
        compare_table,
        paired_table,
        per_phase_tables,
        per_seed_tables,
        read_results,
    )

    results = {}
    for folder in args.runs:
        results[str(folder)] = selected_runs(read_results(folder), args.methods,
                                             args.order_seeds, folder / "results.json")
    print(compare_table(results), end="")
    if args.paired_to:
        print("\n" + paired_table(results, args.paired_to), end="")
    if args.per_phase:
        check_metrics(results, args.per_phase, "--per-phase")
        print("\n" + per_phase_tables(results, args.per_phase), end="")
    if args.per_seed:
        check_metrics(results, args.per_seed, "--per-seed")
        print("\n" + per_seed_tables(results, args.per_seed), end="")
    return 0


def check_metrics(results: dict[str, dict], keys: list[str], flag: str) -> None:
    """Every key must be a metric of every phase of every run (a typo, or acc_shift of a
    run without a shift stream, would otherwise fail deep inside a table)."""
    known = set.intersection(*(set(p) for result in results.values()
                               for r in result["runs"] for p in r["phases"]))
    known -= {"phase", "n_train"}
    for key in keys:
        if key not in known:
            raise InstilError(f"{flag} {key}: not a metric of every phase of these runs; "
                              f"one of {', '.join(sorted(known))}")


def cmd_merge(args: argparse.Namespace) -> int:
    from instil.merge import merge_runs

    merged = merge_runs(args.runs, args.out, args.methods)
    seeds = merged["config"]["order_seeds"]
    print(f"merged {len(merged['runs'])} runs on order seeds {seeds} into {args.out}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from instil.data.fetch import ensure_fmnist

    print(f"Fashion-MNIST: {ensure_fmnist(args.root)}")
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "fetch": cmd_fetch, "dust": cmd_dust,
            "boundary": cmd_boundary, "compare": cmd_compare, "report": cmd_report,
            "merge": cmd_merge,
            "bench": cmd_bench, "promote": cmd_promote, "images": cmd_images}


def one_line(error: BaseException) -> str:
    """An error from a DataLoader worker arrives wrapped in a traceback; keep its message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = re.sub(r"^[\w.]*InstilError: ", "", text)
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OSError as e:  # a disk that filled up, a folder made read-only during a run
        where = f"{e.filename}: " if e.filename else ""
        print(f"instil: error: {where}{e.strerror or e}; fix that and run again (a run: with "
              "--resume, which keeps what it finished)", file=sys.stderr)
        return 2
    except InstilError as e:
        print(f"instil: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("instil: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
