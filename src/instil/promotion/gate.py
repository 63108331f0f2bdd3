"""The promotion's gate and its inputs: holdout accuracy before and after (overall and per
class), the negative and positive flips between the two, and the verdict whether the
promoted model may be used (gain at least min_gain, negative-flip rate at most
max_nfr). Kept apart from the report's layout so that what decides is small and tested
on its own (make mutation).
"""

from __future__ import annotations

from typing import Any

import torch

from instil.promotion.labelled import Labelled

LISTED_FLIPS = 20  # sample names listed per kind of flip


def percent(hits: torch.Tensor) -> float | None:
    return 100.0 * hits.sum().item() / len(hits) if len(hits) else None


def flip_files(mask: torch.Tensor, holdout: Labelled, before: torch.Tensor,
               after: torch.Tensor, classes: list[str]) -> list[dict[str, str]]:
    return [{"path": holdout.names[i], "class": classes[int(holdout.labels[i])],
             "before": classes[int(before[i])], "after": classes[int(after[i])]}
            for i in torch.nonzero(mask).flatten()[:LISTED_FLIPS].tolist()]


def compare(before: torch.Tensor, after: torch.Tensor, holdout: Labelled,
            classes: list[str]) -> dict[str, Any]:
    """Holdout accuracy before and after, per class, and the flips between the two."""
    labels = holdout.labels
    right_before, right_after = before == labels, after == labels
    negative, positive = right_before & ~right_after, ~right_before & right_after
    per_class = []
    for k, name in enumerate(classes):
        mask = labels == k
        b, a = percent(right_before[mask]), percent(right_after[mask])
        per_class.append({"class": name, "images": int(mask.sum()), "before": b, "after": a,
                          "change": None if a is None else a - b})
    n = len(labels)
    # From counts, so that an unchanged model has a gain of exactly zero.
    gain = 100.0 * (int(right_after.sum()) - int(right_before.sum())) / n
    return {
        "acc_before": percent(right_before), "acc_after": percent(right_after), "gain": gain,
        "per_class": per_class,
        "negative_flips": {"count": int(negative.sum()), "nfr": percent(negative),
                           "files": flip_files(negative, holdout, before, after, classes)},
        "positive_flips": {"count": int(positive.sum()), "rate": percent(positive),
                           "files": flip_files(positive, holdout, before, after, classes)},
    }


# Each limit by both its names, since one verdict serves `instil promote` (the flag) and
# instil.promote (the keyword argument).
MIN_GAIN, MAX_NFR = "min_gain (--min-gain)", "max_nfr (--max-nfr)"


def gate(gain: float, nfr: float, min_gain: float, max_nfr: float) -> tuple[bool, str]:
    """Whether the promoted model may be used, and why, in one line."""
    failed = []
    if gain < min_gain:
        failed.append(f"gain {gain:+.2f} points is below {MIN_GAIN} {min_gain:.2f}")
    if nfr > max_nfr:
        failed.append(f"negative-flip rate {nfr:.2f}% exceeds {MAX_NFR} {max_nfr:.2f}%")
    if failed:
        return False, " and ".join(failed)
    return True, (f"gain {gain:+.2f} >= {MIN_GAIN} {min_gain:.2f} and negative-flip rate "
                  f"{nfr:.2f}% <= {MAX_NFR} {max_nfr:.2f}%")
