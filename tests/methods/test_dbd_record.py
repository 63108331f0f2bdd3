"""What DBD writes into the per-epoch record, and the edges of its options and schedule, against
values computed here by hand (METHOD.md §2; the record's terms are defined in
`DBD.term_names`). The loss itself is checked in test_dbd_spec.py on the same tables; here
the noted terms must carry the same numbers under the declared names, in each configuration
and on both the four-call and the lean path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.dbd import DBDOptions, dust, ema_steps_per_phase

from .test_dbd_spec import (
    BETA,
    X_DUST,
    X,
    Y,
    expected_ce,
    expected_dis,
    expected_fl,
    with_tables,
)

INNER_FRACTION = 2 / 3  # the tables' samples 0 and 2 are inner, sample 1 outer


def noted(method) -> dict[str, float]:
    """The terms of the last loss (handed over once: a second call returns {})."""
    return {name: float(value) for name, value in method.terms().items()}


@pytest.mark.parametrize("lean", [False, True])
def test_full_loss_notes_each_term_by_hand(lean: bool) -> None:
    method = with_tables(lean=lean)
    method.full_loss(X, X_DUST, Y)
    fl, dis = expected_fl(), expected_dis()
    terms = noted(method)
    assert terms == pytest.approx({
        "l_fl": fl, "l_dis": dis, "dis_share": BETA * dis / (fl + BETA * dis),
        "outer_fraction": 1 - INNER_FRACTION, "teacher_acc": INNER_FRACTION})
    assert set(terms) == set(method.term_names())


@pytest.mark.parametrize("lean", [False, True])
def test_without_fused_labels_the_record_holds_the_plain_cross_entropy(lean: bool) -> None:
    """The lean path computes the teacher's clean logits anyway; without FL they must not
    turn into outer_fraction/teacher_acc, which term_names does not declare."""
    method = with_tables(lean=lean, fl=False)
    method.full_loss(X, X_DUST, Y)
    ce, dis = expected_ce(), expected_dis()
    terms = noted(method)
    assert terms == pytest.approx(
        {"ce": ce, "l_dis": dis, "dis_share": BETA * dis / (ce + BETA * dis)})
    assert set(terms) == set(method.term_names())


@pytest.mark.parametrize("options, expected", [
    ({"dis": False}, {"l_fl": expected_fl(), "outer_fraction": 1 - INNER_FRACTION,
                      "teacher_acc": INNER_FRACTION}),
    ({"beta": 0.0}, {"l_fl": expected_fl(), "outer_fraction": 1 - INNER_FRACTION,
                     "teacher_acc": INNER_FRACTION}),
    ({"dis": False, "fl": False}, {"ce": expected_ce()}),
])
def test_without_distillation_the_loss_is_the_label_term_alone(options: dict,
                                                               expected: dict) -> None:
    """`loss` skips the dusted batch when L_DIS cannot count; what is left is L_FL against
    the teacher's fused labels (or the plain cross-entropy), computed by hand."""
    method = with_tables(**options)
    loss = method.loss(X, Y)
    label_term = expected.get("l_fl", expected.get("ce"))
    assert loss.item() == pytest.approx(label_term, rel=1e-9)
    terms = noted(method)
    assert terms == pytest.approx(expected)
    assert set(terms) == set(method.term_names())


def test_fl_off_ignores_teacher_logits_it_is_given() -> None:
    method = with_tables(fl=False)
    teacher = method.teacher(X)
    assert method.label_loss(teacher, method.student(X), Y).item() == \
        pytest.approx(expected_ce(), rel=1e-9)


@pytest.mark.parametrize("name, value", [
    ("alpha", 0.0), ("alpha", 1.0), ("tau", 0.01), ("sigma", 0.0), ("beta", 0.0),
    ("lambda_in", 0.0), ("lambda_out", 0.0), ("freeze_epochs", 0), ("ema_every", 0)])
def test_options_may_reach_their_bounds(name: str, value: float) -> None:
    assert getattr(DBDOptions(**{name: value}), name) == value


@pytest.mark.parametrize("name, value, why", [
    ("alpha", -0.1, "must lie in [0, 1]"), ("alpha", 1.5, "must lie in [0, 1]"),
    ("tau", 0.0, "must be positive"), ("sigma", -0.5, "must be >= 0"),
    ("beta", -1.0, "must be >= 0"), ("lambda_in", -0.1, "must be >= 0"),
    ("lambda_out", -2.0, "must be >= 0"), ("freeze_epochs", -1, "must be >= 0"),
    ("ema_every", -3, "must be >= 0"), ("half_life", -1.0, "must be >= 0")])
def test_an_option_out_of_bounds_is_refused_by_name(name: str, value: float, why: str) -> None:
    with pytest.raises(InstilError) as refused:
        DBDOptions(**{name: value})
    assert str(refused.value) == f"method_options.dbd.{name}={value}: {why}"


def test_dust_adds_the_drawn_noise() -> None:
    """x̃ = x + σ·ε for the ε the generator draws (METHOD.md §2.3), not x − σ·ε: the same in
    distribution, but a different batch for a seeded run."""
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    torch.manual_seed(3)
    eps = torch.randn_like(x)
    torch.manual_seed(3)
    torch.testing.assert_close(dust(x, 0.7), x + 0.7 * eps)


@pytest.mark.parametrize("epochs, freeze, steps", [(2, 3, 0), (3, 3, 1), (12, 10, 3),
                                                   (4, 0, 4)])
def test_ema_steps_per_phase_counts_epochs_ef_to_e(epochs: int, freeze: int,
                                                   steps: int) -> None:
    assert ema_steps_per_phase(epochs, freeze) == steps


def started(**options) -> object:
    method = create_method("dbd", options)
    torch.manual_seed(0)
    method.begin_phase(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
                       PhaseContext(1, 2, lambda: None))
    return method


def test_a_phase_starts_frozen_with_a_teacher_that_takes_no_gradient() -> None:
    method = started(freeze_epochs=1)
    assert not method.consolidating()  # no epoch done yet, though E_f is only 1
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert all(p.requires_grad for p in method.student.parameters())


def test_per_step_ema_every_third_step() -> None:
    method = started(freeze_epochs=0, ema_every=3, alpha=0.5)
    moved = []
    for step in range(7):
        before = [p.clone() for p in method.teacher.parameters()]
        with torch.no_grad():
            for p in method.student.parameters():
                p.add_(1.0)
        method.after_step(step)
        if any(not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters())):
            moved.append(step)
    assert moved == [2, 5]  # after the 3rd and the 6th step


def test_epoch_facts_measure_the_gap_between_teacher_and_student() -> None:
    method = started(freeze_epochs=5)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.5)
    n = sum(p.numel() for p in method.student.parameters())
    facts = method.epoch_facts()
    assert facts == pytest.approx({"ema_steps": 0, "theta_distance": 0.5 * math.sqrt(n)})


def test_phase_facts_without_kc_record_no_ema_steps() -> None:
    assert started(kc=False).phase_facts() == {}
    assert started().phase_facts() == {"ema_steps": 0}


@pytest.mark.parametrize("options, compiles, per_step", [
    ({}, True, False), ({"lean": True}, False, False), ({"lean": True, "dis": False}, True, False),
    ({"ema_every": 4}, True, True), ({"ema_every": 4, "kc": False}, True, False)])
def test_what_the_engine_is_told(options: dict, compiles: bool, per_step: bool) -> None:
    """The lean step swaps BatchNorm forwards, which torch.compile cannot trace; a per-step
    EMA reads the student's buffers every step (the engine must not defer them)."""
    method = started(**options)
    assert method.compiles() is compiles
    assert method.reads_buffers_each_step() is per_step


@pytest.mark.parametrize("half_life, keep", [(1.0, 0.5), (2.0, 0.5 ** 0.5), (0.0, 0.9)])
def test_a_half_life_sets_the_keep_rate_of_each_ema_step(half_life: float,
                                                         keep: float) -> None:
    """θ_T ← α·θ_T + (1 − α)·θ_S with α = 0.5^(1/h); h = 0 keeps `alpha` (0.9 here)."""
    method = started(freeze_epochs=0, alpha=0.9, half_life=half_life)
    teacher = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.end_epoch(0)
    for before, after in zip(teacher, method.teacher.parameters()):
        torch.testing.assert_close(after, before + (1 - keep))


def test_after_h_steps_half_the_teachers_share_is_left() -> None:
    method = started(freeze_epochs=0, half_life=3.0)
    teacher = [p.clone() for p in method.teacher.parameters()]
    student = [p.clone() for p in method.student.parameters()]
    for epoch in range(3):  # the student stands still: the teacher closes half the gap
        method.end_epoch(epoch)
    for t0, s, t3 in zip(teacher, student, method.teacher.parameters()):
        torch.testing.assert_close(t3, 0.5 * t0 + 0.5 * s)


def test_a_carried_student_goes_on_from_the_last_phase() -> None:
    method = started(student_start="carry", freeze_epochs=1, alpha=0.5)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.end_epoch(0)  # the teacher moves half way
    last_student = [p.clone() for p in method.student.parameters()]
    method.begin_phase(method.deployed(), PhaseContext(2, 2, lambda: None))
    assert all(torch.equal(a, b) for a, b in zip(method.student.parameters(), last_student))
    assert not any(torch.equal(a, b) for a, b in zip(method.teacher.parameters(),
                                                      last_student))
    assert all(p.requires_grad for p in method.student.parameters())
    paper = started(freeze_epochs=1, alpha=0.5)  # the paper's: a copy of the teacher
    with torch.no_grad():
        for p in paper.student.parameters():
            p.add_(1.0)
    paper.end_epoch(0)
    assert not any(torch.equal(a, b) for a, b in zip(paper.student.parameters(),
                                                     paper.teacher.parameters()))
    paper.begin_phase(paper.deployed(), PhaseContext(2, 2, lambda: None))
    assert all(torch.equal(a, b) for a, b in zip(paper.student.parameters(),
                                                 paper.teacher.parameters()))


def test_an_unknown_student_start_is_refused_by_name() -> None:
    with pytest.raises(InstilError, match=r"student_start='last': must be 'teacher' or 'carry'"):
        DBDOptions(student_start="last")
