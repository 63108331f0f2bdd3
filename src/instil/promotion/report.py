"""What a promotion reports: what ran on what, the gate's inputs and verdict (promotion.gate),
the training's per-epoch record.

The report is one plain dict (what `instil promote` writes as NEW_CKPT.report.json and
`instil.promote` returns as Promotion.report), printed as Markdown by `report_markdown`.
"""

from __future__ import annotations

import time
from typing import Any

from instil.promotion.gate import gate
from instil.promotion.labelled import Labelled


def build_report(*, model: str, method: str, options: dict[str, Any], train: dict[str, Any],
                 new: Labelled, fingerprint: str, holdout: Labelled, holdout_source: str,
                 scores: dict[str, Any], min_gain: float, max_nfr: float,
                 seconds: float, epochs: list[dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """The report: what ran on what, the scores, the gate's verdict and the training's
    per-epoch record (`epochs`, as epochs.jsonl of `instil run` has it). `model`, `arch` and
    `out` describe the files of `instil promote` (it fills in the last two)."""
    passed, reason = gate(scores["gain"], scores["negative_flips"]["nfr"], min_gain, max_nfr)
    return {
        "model": model, "arch": None, "out": None,
        "method": method, "options": options, "train": train,
        "new_data": {"folder": new.source, "images": len(new), "fingerprint": fingerprint},
        "holdout": {"folder": holdout.source, "source": holdout_source,
                    "images": len(holdout)},
        **scores,
        "gate": {"min_gain": min_gain, "max_nfr": max_nfr, "passed": passed,
                 "reason": reason},
        "train_seconds": seconds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "epochs": list(epochs or []),
    }


# Keys of a per-epoch record that are no loss term or fact of the method.
EPOCH_COLUMNS = ("method", "order_seed", "phase", "epoch", "lr", "seconds", "images_per_s")


def epochs_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The training's per-epoch table: lr, then the loss terms and the method's facts."""
    if not records:
        return []
    names = [k for k in records[0] if k not in EPOCH_COLUMNS]
    lines = ["", "### Training per epoch", "",
             "| epoch | lr | " + " | ".join(names) + " | s |",
             "|---:|---:|" + "---:|" * len(names) + "---:|"]
    for r in records:
        cells = [fmt_term(r.get(name)) for name in names]
        lines.append(f"| {r['epoch']} | {r['lr']:.4g} | " + " | ".join(cells)
                     + f" | {r['seconds']:.1f} |")
    return lines


def fmt_term(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.4g}"


def fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def verdict(report: dict[str, Any]) -> str:
    """The gate's line; with the file it wrote (or not) when the report names one."""
    gate_ = report["gate"]
    line = f"Gate: {'passed' if gate_['passed'] else 'failed'}: {gate_['reason']}"
    if report.get("out") is None:
        return line + "."
    return line + (f"; wrote {report['out']}." if gate_["passed"]
                   else f"; {report['out']} not written.")


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what ran, the per-class table, flips, the gate's verdict."""
    train, new, hold = report["train"], report["new_data"], report["holdout"]
    neg, pos = report["negative_flips"], report["positive_flips"]
    lines = [
        f"## Promotion of {report['model']} with {report['method']}",
        "",
        f"- new data: {new['folder']}, {new['images']} images trained on",
        f"- holdout: {hold['source']}, {hold['images']} images",
        f"- training: {train['epochs']} epochs, lr {train['lr']}, batch size "
        f"{train['batch_size']}, crop padding {train['crop_padding']}, flip "
        f"{'on' if train['flip'] else 'off'}, seed {train['seed']}; "
        f"{report['train_seconds']:.1f} s on {train['device']}",
        "",
        "| class | holdout images | acc before | acc after | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["per_class"]:
        lines.append(f"| {row['class']} | {row['images']} | {fmt(row['before'])} | "
                     f"{fmt(row['after'])} | {fmt(row['change'], sign=True)} |")
    lines += [
        f"| **all** | {hold['images']} | {fmt(report['acc_before'])} | "
        f"{fmt(report['acc_after'])} | **{fmt(report['gain'], sign=True)}** |",
        "",
        f"Negative flips (right before, wrong after): {neg['count']}, nfr "
        f"{fmt(neg['nfr'])}% of the holdout. Positive flips (wrong before, right after): "
        f"{pos['count']} ({fmt(pos['rate'])}%).",
        "",
        verdict(report),
    ]
    lines += epochs_markdown(report.get("epochs", []))
    for title, flips in (("Negative", neg), ("Positive", pos)):
        if flips["files"]:
            shown = len(flips["files"])
            lines += ["", f"### {title} flips"
                      + (f" (first {shown} of {flips['count']})" if shown < flips["count"]
                         else ""), ""]
            lines += [f"- {f['path']} ({f['class']}; predicted {f['before']} before, "
                      f"{f['after']} after)" for f in flips["files"]]
    return "\n".join(lines) + "\n"


def history_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The promotion as one entry of a checkpoint's history (plain data only)."""
    keys = ("method", "options", "train", "new_data", "holdout", "acc_before", "acc_after",
            "gain", "train_seconds", "date")
    entry = {"kind": "promote", "from": report["model"], **{k: report[k] for k in keys}}
    entry["nfr"] = report["negative_flips"]["nfr"]
    entry["negative_flips"] = report["negative_flips"]["count"]
    entry["positive_flips"] = report["positive_flips"]["count"]
    entry["per_class"] = report["per_class"]
    return entry
