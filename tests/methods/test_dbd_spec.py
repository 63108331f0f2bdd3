"""DBD's loss against METHOD.md §2, from hand-made logits: the expected L_FL, L_DIS and total
are computed here in plain Python from the formulas, never by calling the code under test,
so that the four-call and the lean path cannot both be wrong together unnoticed.

§2.2 fused labels: ŷ = (σ(T(x)/τ) + λ·e_y) / (1 + λ), λ = λ_in where the teacher's arg-max
is the label (inner), λ_out elsewhere (outer); L_FL = τ² · CE(ŷ, σ(S(x)/τ)).
§2.3 L_DIS = τ² · KL(σ(T(x̃)/τ) ‖ σ(S(x̃)/τ)) on the dusted batch x̃ = x + σ·ε.
§2.4 L = L_FL + β·L_DIS.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from instil.config import TrainConfig
from instil.methods import create_method
from instil.methods.base import PhaseContext

# Three classes; samples 0-2 are the clean batch, 3-5 its dusted copy (rows of the tables).
TEACHER = [[2.0, 0.5, -1.0],   # arg-max 0
           [0.1, 1.5, 0.3],    # arg-max 1
           [1.0, -0.5, 0.8],   # arg-max 0
           [0.3, 0.2, 1.1],    # dusted rows
           [1.2, 1.0, -0.4],
           [-0.6, 0.9, 0.4]]
STUDENT = [[1.0, 1.2, -0.3],
           [0.4, 0.2, 1.6],
           [-0.2, 0.9, 0.1],
           [0.8, -0.7, 0.6],
           [0.2, 1.4, 0.3],
           [1.1, 0.1, -0.2]]
LABELS = [0, 2, 0]  # samples 0 and 2 are inner (teacher right), sample 1 is outer
TAU, BETA, LAMBDA_IN, LAMBDA_OUT = 2.0, 0.5, 0.3, 2.0


def softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def fused(teacher_row: list[float], label: int) -> list[float]:
    inner = max(range(3), key=lambda k: teacher_row[k]) == label
    lam = LAMBDA_IN if inner else LAMBDA_OUT
    p = softmax(teacher_row, TAU)
    return [(p[k] + lam * (k == label)) / (1 + lam) for k in range(3)]


def expected_fl() -> float:
    terms = []
    for i, y in enumerate(LABELS):
        target, q = fused(TEACHER[i], y), softmax(STUDENT[i], TAU)
        terms.append(-sum(t * math.log(qk) for t, qk in zip(target, q)))
    return TAU ** 2 * sum(terms) / len(terms)


def expected_dis() -> float:
    terms = []
    for i in range(3, 6):
        p, q = softmax(TEACHER[i], TAU), softmax(STUDENT[i], TAU)
        terms.append(sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q)))
    return TAU ** 2 * sum(terms) / len(terms)


def expected_ce() -> float:
    """The plain one-hot cross-entropy at τ = 1 (FL off)."""
    terms = [-math.log(softmax(STUDENT[i], 1.0)[y]) for i, y in enumerate(LABELS)]
    return sum(terms) / len(terms)


class Lookup(nn.Module):
    """Returns row x[i, 0] of a table of logits: a model whose outputs the test chooses."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def with_tables(lean: bool = False, **options) -> object:
    method = create_method("dbd", {"tau": TAU, "beta": BETA, "lambda_in": LAMBDA_IN,
                                   "lambda_out": LAMBDA_OUT, "lean": lean, **options})
    method.begin_phase(Lookup(TEACHER), PhaseContext(1, 2, lambda: None))
    method.teacher = Lookup(TEACHER).eval().requires_grad_(False)
    method.student = Lookup(STUDENT)
    return method


X = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
X_DUST = torch.tensor([[3.0], [4.0], [5.0]], dtype=torch.float64)
Y = torch.tensor(LABELS)


def test_the_hand_made_batch_has_inner_and_outer_samples() -> None:
    inner = [max(range(3), key=lambda k: TEACHER[i][k]) == y for i, y in enumerate(LABELS)]
    assert inner == [True, False, True]


@pytest.mark.parametrize("lean", [False, True])
def test_total_loss_is_fl_plus_beta_dis_by_hand(lean: bool) -> None:
    loss = with_tables(lean=lean).full_loss(X, X_DUST, Y)
    assert loss.item() == pytest.approx(expected_fl() + BETA * expected_dis(), rel=1e-9)


def test_each_term_alone_matches_its_formula() -> None:
    method = with_tables()
    assert method.full_loss(X, X_DUST, Y).item() - BETA * expected_dis() == \
        pytest.approx(expected_fl(), rel=1e-9)
    no_dis = with_tables(beta=0.0)
    assert no_dis.full_loss(X, X_DUST, Y).item() == pytest.approx(expected_fl(), rel=1e-9)
    no_fl = with_tables(fl=False)
    assert no_fl.full_loss(X, X_DUST, Y).item() == \
        pytest.approx(expected_ce() + BETA * expected_dis(), rel=1e-9)


def test_the_formula_tells_the_wrong_variants_apart() -> None:
    """The hand values above are not accidentally equal to those of the mistakes the tests
    must catch: KL the other way round, no τ², λ_in and λ_out swapped, fused labels from the
    student."""
    right = expected_fl() + BETA * expected_dis()
    reverse_kl = [sum(qk * (math.log(qk) - math.log(pk)) for pk, qk in
                      zip(softmax(TEACHER[i], TAU), softmax(STUDENT[i], TAU)))
                  for i in range(3, 6)]
    assert abs(expected_fl() + BETA * TAU ** 2 * sum(reverse_kl) / 3 - right) > 1e-3
    assert abs((expected_fl() + BETA * expected_dis()) / TAU ** 2 - right) > 1e-3
    global LAMBDA_IN, LAMBDA_OUT
    LAMBDA_IN, LAMBDA_OUT = LAMBDA_OUT, LAMBDA_IN
    try:
        swapped = expected_fl()
    finally:
        LAMBDA_IN, LAMBDA_OUT = LAMBDA_OUT, LAMBDA_IN
    assert abs(swapped - expected_fl()) > 1e-3


def test_the_gradient_reaches_the_student_only() -> None:
    method = with_tables()
    method.full_loss(X, X_DUST, Y).backward()
    assert method.student.table.grad is not None
    assert method.student.table.grad[:6].abs().sum() > 0
    assert method.teacher.table.grad is None


class Recorder(nn.Module):
    """A linear model that keeps the inputs it saw (to read the dusting noise off them)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1)[:, :1])


@pytest.mark.parametrize("sigma", [0.25, 3.0])
def test_sigma_sets_the_noise_the_student_sees(sigma: float) -> None:
    method = create_method("dbd", {"sigma": sigma})
    method.begin_phase(Recorder(), PhaseContext(1, 2, lambda: None))
    torch.manual_seed(0)
    x = torch.zeros(4000, 1)
    method.loss(x, torch.zeros(4000, dtype=torch.long))
    clean, dusted = method.student.seen  # the clean batch, then the dusted one
    assert torch.equal(clean, x)
    assert dusted.std().item() == pytest.approx(sigma, rel=0.05)
    assert dusted.mean().item() == pytest.approx(0.0, abs=0.1 * sigma)


def test_per_step_ema_waits_for_the_freezing_period() -> None:
    """ema_every = 1 with E_f = 2 of 3 epochs: no step of epochs 1-2 moves the teacher,
    every step of epoch 3 does (METHOD.md §2.5: from the end of epoch E_f on)."""
    from instil.engine.fit import fit

    from .phase_data import TensorBatches

    method = create_method("dbd", {"freeze_epochs": 2, "ema_every": 1, "alpha": 0.5})
    torch.manual_seed(0)
    method.begin_phase(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                       PhaseContext(1, 2, lambda: None))
    moved: list[int] = []
    real_after_step = method.after_step

    def after_step(step: int) -> None:
        before = [p.clone() for p in method.teacher.parameters()]
        real_after_step(step)
        if any(not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters())):
            moved.append(step)

    method.after_step = after_step
    g = torch.Generator().manual_seed(0)
    batches = TensorBatches(torch.randn(16, 4, generator=g), torch.arange(16) % 3, 4, True)
    fit(method, batches, TrainConfig(epochs=3, lr=0.1), "test")
    assert moved == [8, 9, 10, 11]  # the 4 steps of the third epoch, and only those
    assert method.phase_facts() == {"ema_steps": 4}
