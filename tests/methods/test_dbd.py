"""DBD's parts, each checked alone against METHOD.md §2, and every variant end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instil.cli import main
from instil.config import TrainConfig
from instil.errors import InstilError
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.dbd import (
    DBD,
    batch_statistics,
    consolidate,
    distillation_kl,
    dust,
    fused_labels,
    inner_mask,
)
from instil.models import create_model


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_small", (1, 8, 8), 3, widths=(4, 4, 4))


def started(name: str = "dbd", **options) -> object:
    method = create_method(name, options)
    method.begin_phase(tiny_cnn(), PhaseContext(1, 2, lambda: None))
    return method


def test_inner_and_outer_by_the_teachers_argmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert inner_mask(logits, torch.tensor([0, 2])).tolist() == [True, False]


def test_fused_labels_sum_to_one_and_follow_the_formula() -> None:
    torch.manual_seed(1)
    logits = torch.randn(64, 5) * 3
    labels = torch.randint(0, 5, (64,))
    target = fused_labels(logits, labels, lambda_in=0.5, lambda_out=2.0, tau=2.0)
    assert torch.allclose(target.sum(1), torch.ones(64))
    i = int(torch.nonzero(~inner_mask(logits, labels))[0])
    p = F.softmax(logits[i] / 2.0, dim=0)
    expected = (p + 2.0 * F.one_hot(labels[i], 5)) / 3.0
    assert torch.allclose(target[i], expected)
    j = int(torch.nonzero(inner_mask(logits, labels))[0])
    p = F.softmax(logits[j] / 2.0, dim=0)
    assert torch.allclose(target[j], (p + 0.5 * F.one_hot(labels[j], 5)) / 1.5)


def test_outer_label_is_the_argmax_when_lambda_out_at_least_one() -> None:
    torch.manual_seed(2)
    logits = torch.randn(500, 10) * 4  # a confident, often wrong teacher
    labels = torch.randint(0, 10, (500,))
    outer = ~inner_mask(logits, labels)
    assert outer.sum() > 100
    target = fused_labels(logits, labels, lambda_in=0.0, lambda_out=1.0, tau=1.0)
    assert torch.equal(target[outer].argmax(1), labels[outer])
    # At λ_out = 1 a teacher certain of another class ties with the label (p_y = 0, p_c = 1),
    # so the guarantee is "at least as large"; any λ_out > 1 makes it strict.
    saturated = torch.tensor([[0.0, 60.0, 0.0]])
    tie = fused_labels(saturated, torch.tensor([0]), 0.0, 1.0, 1.0)[0]
    assert tie[0] >= tie.max() - 1e-6
    strict = fused_labels(saturated, torch.tensor([0]), 0.0, 1.01, 1.0)[0]
    assert strict.argmax() == 0


def test_fl_off_is_one_hot_cross_entropy() -> None:
    method = started(fl=False, dis=False)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = method.loss(x, y)
    method.student.train()
    assert torch.allclose(loss, F.cross_entropy(method.student(x), y))


def test_dusting_noise_statistics() -> None:
    torch.manual_seed(3)
    x = torch.full((200, 1, 16, 16), 0.7)
    noise = dust(x, 1.5) - x
    assert abs(noise.mean().item()) < 0.02
    assert noise.std().item() == pytest.approx(1.5, rel=0.02)
    assert not torch.equal(dust(x, 1.5), dust(x, 1.5))  # fresh noise every call


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


def dusted_loss(method: DBD, x: torch.Tensor) -> torch.Tensor:
    """L_DIS alone on freshly dusted x, through the method's own dusted pass."""
    return distillation_kl(*method.dusted_logits(dust(x, method.options.sigma)),
                           method.options.tau)


def test_dusted_pass_leaves_running_statistics_of_both_models() -> None:
    method = started()
    teacher_before, student_before = bn_state(method.teacher), bn_state(method.student)
    method.student.train()
    dusted_loss(method, torch.randn(8, 1, 8, 8)).backward()
    for before, model in ((teacher_before, method.teacher), (student_before, method.student)):
        after = bn_state(model)
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert not method.teacher.training and method.student.training


def test_batch_statistics_context_uses_the_batch_and_restores_modes() -> None:
    model = tiny_cnn().eval()
    x = torch.randn(8, 1, 8, 8) * 5 + 3
    with torch.no_grad():
        eval_out = model(x)
        with batch_statistics(model):
            batch_out = model(x)
    assert not torch.allclose(eval_out, batch_out)
    assert not model.training
    assert all(m.track_running_stats for m in model.modules()
               if isinstance(m, nn.BatchNorm2d))


def test_distillation_loss_is_exactly_zero_while_student_equals_teacher() -> None:
    method = started(sigma=1.0)
    method.student.train()
    assert dusted_loss(method, torch.randn(16, 1, 8, 8)).item() == 0.0


@pytest.mark.parametrize(("fl", "teacher_calls"), [(True, 2), (False, 1)])
def test_the_teacher_sees_the_clean_batch_only_for_fused_labels(fl: bool,
                                                               teacher_calls: int) -> None:
    method = started(fl=fl)
    calls = []
    method.teacher.register_forward_hook(lambda *_: calls.append(1))
    method.student.train()
    method.loss(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))).backward()
    assert len(calls) == teacher_calls


def test_consolidation_is_the_exact_ema_including_buffers() -> None:
    teacher, student = tiny_cnn(), tiny_cnn()
    with torch.no_grad():
        for t in (*student.parameters(), *student.buffers()):
            if t.is_floating_point():
                t.add_(torch.randn_like(t))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    consolidate(teacher, student, alpha=0.75)
    s = student.state_dict()
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * before[key] + 0.25 * s[key]), key
        else:
            assert torch.equal(value, before[key])  # num_batches_tracked stays the teacher's
    assert any("running_var" in k for k in before)


def step_epochs(method, epochs: int) -> None:
    for epoch in range(epochs):
        with torch.no_grad():
            for p in method.student.parameters():
                p.add_(0.1)
        method.end_epoch(epoch)


def test_no_consolidation_inside_the_freezing_period() -> None:
    method = started(freeze_epochs=2, alpha=0.5)
    frozen = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    step_epochs(method, 1)
    assert all(torch.equal(frozen[k], v) for k, v in method.teacher.state_dict().items())
    step_epochs(method, 2)  # the epoch that ends the period consolidates
    assert not all(torch.equal(frozen[k], v) for k, v in method.teacher.state_dict().items())


def test_consolidation_every_k_steps() -> None:
    method = started(freeze_epochs=0, alpha=0.5, ema_every=2)
    frozen = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_step(0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, method.teacher.parameters()))
    method.after_step(1)
    assert all(torch.allclose(b, a + 0.5) for a, b in zip(frozen, method.teacher.parameters()))


def test_the_teacher_is_deployed_unless_kc_is_off() -> None:
    method = started()
    assert method.deployed() is method.teacher
    assert method.trainable() is method.student
    nokc = started("dbd-nokc")
    assert nokc.deployed() is nokc.student


def test_variants_fix_their_switches() -> None:
    assert started("dbd-nofl").options.fl is False
    assert started("dbd-dis-only").options == started(fl=False, kc=False).options
    with pytest.raises(InstilError, match="fixes it"):
        create_method("dbd-nofl", {"fl": True})


def test_a_budget_shorter_than_the_freezing_period_is_refused() -> None:
    method = create_method("dbd", {"freeze_epochs": 10})
    with pytest.raises(InstilError, match="nothing would be consolidated"):
        method.check_budget(TrainConfig(epochs=9))
    method.check_budget(TrainConfig(epochs=10))  # one step, after the last epoch
    create_method("dbd-nokc", {"freeze_epochs": 10}).check_budget(TrainConfig(epochs=9))


# (epochs E, freeze E_f, EMA steps): after epochs E_f, ..., E (METHOD.md §2.5), written out.
EMA_STEPS = [(3, 1, 3), (3, 2, 2), (3, 3, 1), (12, 10, 3), (4, 0, 4)]


@pytest.mark.parametrize(("epochs", "freeze", "steps"), EMA_STEPS)
def test_a_phase_consolidates_after_epochs_ef_to_e(monkeypatch, epochs: int, freeze: int,
                                                   steps: int) -> None:
    import instil.methods.dbd as dbd_module
    from instil.engine.fit import fit

    from .phase_data import TensorBatches

    after_epoch: list[int] = []
    real = dbd_module.consolidate

    def counted(teacher, student, alpha):
        after_epoch.append(method.epochs_done)
        real(teacher, student, alpha)

    monkeypatch.setattr(dbd_module, "consolidate", counted)
    method = started(freeze_epochs=freeze, alpha=0.5)
    g = torch.Generator().manual_seed(0)
    batches = TensorBatches(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 3, 4, True)
    fit(method, batches, TrainConfig(epochs=epochs, lr=0.01), "test")
    assert len(after_epoch) == steps == dbd_module.ema_steps_per_phase(epochs, freeze)
    assert after_epoch == list(range(epochs - steps + 1, epochs + 1))
    assert method.phase_facts() == {"ema_steps": steps}


VARIANTS = ["dbd", "dbd-nofl", "dbd-nodis", "dbd-nokc", "dbd-dis-only"]


def test_every_variant_runs_two_phases_through_the_cli(tmp_path: Path,
                                                       toy_args: list[str]) -> None:
    out = tmp_path / "out"
    args = ["--set", "method_options.dbd={freeze_epochs: 1}"]
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "n_phases=2", "--set", "order_seeds=[0]",
                 "--set", f"methods={VARIANTS}", *args]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["method"] for r in runs] == VARIANTS
    for run in runs:
        assert [p["phase"] for p in run["phases"]] == [1, 2]
        assert {"student_acc_test", "student_acc_base"} <= set(run["phases"][0])


def test_variants_inherit_the_parent_options_except_their_switches() -> None:
    from instil.config import load_config
    from instil.engine.protocol import method_for

    config = load_config(None, ["method_options.dbd={sigma: 0.5, fl: true}",
                                "method_options.dbd-nokc={beta: 2.0}"])
    nofl = method_for(config, "dbd-nofl")
    assert nofl.options.sigma == 0.5 and nofl.options.fl is False
    nokc = method_for(config, "dbd-nokc")
    assert (nokc.options.sigma, nokc.options.beta, nokc.options.kc) == (0.5, 2.0, False)
