"""The metrics of METHOD.md §1, in percent, and confidence intervals across order seeds."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (predictions == labels).float().mean().item()


@dataclass(frozen=True)
class Reference:
    """What M(0) scored: every later metric is measured against it."""

    acc_test: float
    acc_base: float
    correct_test: torch.Tensor  # bool per test sample


def reference(test_pred: torch.Tensor, test_labels: torch.Tensor, base_pred: torch.Tensor,
              base_labels: torch.Tensor) -> Reference:
    return Reference(accuracy(test_pred, test_labels), accuracy(base_pred, base_labels),
                     test_pred == test_labels)


def negative_flip_rate(ref_correct: torch.Tensor, predictions: torch.Tensor,
                       labels: torch.Tensor) -> float:
    """% of test samples M(0) got right and the new model gets wrong."""
    flips = ref_correct & (predictions != labels)
    return 100.0 * flips.float().mean().item()


def phase_metrics(ref: Reference, test_pred: torch.Tensor, test_labels: torch.Tensor,
                  base_pred: torch.Tensor, base_labels: torch.Tensor) -> dict[str, float]:
    acc_test = accuracy(test_pred, test_labels)
    acc_base = accuracy(base_pred, base_labels)
    f = ref.acc_base - acc_base
    return {
        "acc_test": acc_test,
        "pp": acc_test - ref.acc_test,
        "acc_base": acc_base,
        "f": f,
        "f_rel": 100.0 * f / ref.acc_base if ref.acc_base > 0 else float("nan"),
        "nfr": negative_flip_rate(ref.correct_test, test_pred, test_labels),
    }


def t_pdf(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """Student-t CDF by Simpson's rule on [0, |x|]; accurate to ~1e-9 for the quantiles used."""
    a = abs(x)
    h = a / steps
    s = t_pdf(0.0, df) + t_pdf(a, df)
    s += sum((4 if i % 2 else 2) * t_pdf(i * h, df) for i in range(1, steps))
    half = s * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """Inverse of the Student-t CDF by bisection (no SciPy needed)."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval: t(0.975, n-1)·s/√n; the width is nan for n=1."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.975, n - 1) * s / math.sqrt(n)
