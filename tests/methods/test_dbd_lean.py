"""The lean DBD step (one teacher and one student call on cat([x, x̃])) against the four
separate calls it replaces: the same loss, gradients and BatchNorm state, METHOD.md §2.3."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.dbd import batch_statistics, distillation_kl, dust, split_batchnorm
from instil.models import create_model

SHAPES = {"resnet_small": (1, 8, 8), "mlp": (2,)}
# float64 on the CPU: the two paths differ only in how the convolutions and linear layers
# block a batch of 2n against two of n, so they agree to rounding.
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def previous_model(name: str, dtype: torch.dtype, momentum: float | None) -> nn.Module:
    """A model whose running statistics are not the initial 0 and 1, so that the teacher's
    eval half and the student's running update are both visible."""
    torch.manual_seed(0)
    options = {"widths": (4, 4, 4)} if name == "resnet_small" else {"hidden": (8, 8)}
    model = create_model(name, SHAPES[name], 3, **options).to(dtype).train()
    for norm in norms(model):
        norm.momentum = momentum
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *SHAPES[name], dtype=dtype) * 2 + 1)
    return model


def lean_and_four_calls(name: str, dtype: torch.dtype = torch.float64,
                        momentum: float | None = 0.1, **options) -> list:
    """Two DBD methods in the same state, lean and not, with S ≠ T (so L_DIS and its
    gradient are not zero) and the student in train mode, as the engine leaves it."""
    previous = previous_model(name, dtype, momentum)
    torch.manual_seed(1)
    shift = [0.1 * torch.randn_like(p) for p in previous.parameters()]
    methods = []
    for lean in (True, False):
        method = create_method("dbd", {**options, "lean": lean})
        method.begin_phase(previous, PhaseContext(1, 2, lambda: None))
        with torch.no_grad():
            for p, d in zip(method.student.parameters(), shift):
                p.add_(d)
        method.student.train()
        methods.append(method)
    return methods


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def assert_same_bn_state(a: nn.Module, b: nn.Module, **tol) -> None:
    sa, sb = bn_state(a), bn_state(b)
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        if "num_batches" in key:
            assert torch.equal(sa[key], sb[key]), key
        else:
            torch.testing.assert_close(sa[key], sb[key], **tol, msg=key)


@pytest.mark.parametrize("momentum", [0.1, None])  # None: PyTorch's cumulative average
@pytest.mark.parametrize("name", ["resnet_small", "mlp"])
def test_lean_steps_equal_the_four_calls(name: str, momentum: float | None) -> None:
    lean, four = lean_and_four_calls(name, momentum=momentum, beta=0.5, tau=2.0)
    optimizers = [torch.optim.SGD(m.student.parameters(), lr=0.1, momentum=0.9)
                  for m in (lean, four)]
    batches_before = [int(n.num_batches_tracked) for n in norms(lean.student)]
    for step in range(2):
        torch.manual_seed(10 + step)
        x = torch.randn(8, *SHAPES[name], dtype=torch.float64) * 1.5 - 0.5
        y = torch.randint(0, 3, (8,))
        losses = []
        for method, optimizer in zip((lean, four), optimizers):
            torch.manual_seed(100 + step)  # dust draws the same noise in both
            loss = method.loss(x, y)
            optimizer.zero_grad()
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], **TIGHT)
        for (key, p), q in zip(lean.student.named_parameters(), four.student.parameters()):
            assert p.grad is not None and p.grad.abs().sum() > 0, key
            torch.testing.assert_close(p.grad, q.grad, **TIGHT, msg=key)
        assert_same_bn_state(lean.student, four.student, **TIGHT)
        assert_same_bn_state(lean.teacher, four.teacher, rtol=0, atol=0)
        for optimizer in optimizers:
            optimizer.step()
    # Only the clean half counted, once per step; the teacher never moved.
    assert [int(n.num_batches_tracked) for n in norms(lean.student)] == [
        b + 2 for b in batches_before]
    assert all(int(n.num_batches_tracked) == 3 for n in norms(lean.teacher))


def test_lean_step_equals_the_four_calls_in_float32() -> None:
    lean, four = lean_and_four_calls("resnet_small", torch.float32)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    x_dust = dust(x, 1.0)  # drawn once, given to both
    losses = [m.full_loss(x, x_dust, y) for m in (lean, four)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for p, q in zip(lean.student.parameters(), four.student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert_same_bn_state(lean.student, four.student, rtol=1e-5, atol=1e-6)


def batch_sizes(model: nn.Module) -> list[int]:
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("options, lean_calls, four_calls", [
    ({}, [16], [8, 8]),  # the clean and the dusted batch in one call
    ({"dis": False}, [8], [8]),  # no dusted batch: nothing to join
    ({"beta": 0.0}, [8], [8]),
])
def test_the_lean_step_calls_each_model_once(options: dict, lean_calls: list[int],
                                             four_calls: list[int]) -> None:
    lean, four = lean_and_four_calls("mlp", **options)
    for method, calls in ((lean, lean_calls), (four, four_calls)):
        teacher, student = batch_sizes(method.teacher), batch_sizes(method.student)
        torch.manual_seed(5)
        method.loss(torch.randn(8, 2, dtype=torch.float64), torch.randint(0, 3, (8,)))
        assert teacher == calls and student == calls


def test_lean_distillation_loss_is_exactly_zero_while_student_equals_teacher() -> None:
    method = create_method("dbd", {"lean": True})
    method.begin_phase(previous_model("resnet_small", torch.float32, 0.1),
                       PhaseContext(1, 2, lambda: None))
    method.student.train()
    x = torch.randn(16, 1, 8, 8)
    _, _, teacher_dust, student_dust = method.joint_logits(x, dust(x, 1.0))
    assert distillation_kl(teacher_dust, student_dust, 1.0).item() == 0.0


@pytest.mark.parametrize("train", [False, True])
def test_split_batchnorm_treats_each_part_as_its_own_call(train: bool) -> None:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3, eps=0.1).double()  # an eps of its own, which the split must use
    with torch.no_grad():
        for t in (norm.running_mean, norm.weight, norm.bias):
            t.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    norm.train(train)
    separate, joined = copy.deepcopy(norm), copy.deepcopy(norm)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)  # the split need not be in the middle
    x_dust = torch.randn(7, 3, 4, 4, dtype=torch.float64) * 3 + 1
    first = separate(x)
    with batch_statistics(separate):
        rest = separate(x_dust)
    with split_batchnorm(joined, 5):
        out = joined(torch.cat([x, x_dust]))
    torch.testing.assert_close(out, torch.cat([first, rest]), **TIGHT)
    assert_same_bn_state(separate, joined, **TIGHT)
    assert int(joined.num_batches_tracked) == int(train)
    if not train:  # eval: the first part normalised with the running statistics
        expected = (x - norm.running_mean[:, None, None]) / torch.sqrt(
            norm.running_var[:, None, None] + norm.eps)
        expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
        torch.testing.assert_close(out[:5], expected.detach(), **TIGHT)


def test_split_batchnorm_restores_forward_and_state_after_an_exception() -> None:
    model = previous_model("resnet_small", torch.float32, 0.1).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fail(*_) -> None:
        raise RuntimeError("boom")

    hook = model.head.register_forward_pre_hook(fail)  # after every BatchNorm ran
    with pytest.raises(RuntimeError, match="boom"), split_batchnorm(model, 3):
        assert all("forward" in m.__dict__ for m in norms(model))
        model(torch.cat([x, x]))
    hook.remove()
    assert all("forward" not in m.__dict__ for m in norms(model))
    assert not model.training and all(m.track_running_stats for m in norms(model))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_split_batchnorm_puts_back_a_forward_set_on_the_instance() -> None:
    norm = nn.BatchNorm1d(2)
    own = norm.forward
    norm.forward = own  # an override already on the instance, e.g. an outer context's
    with split_batchnorm(norm, 1):
        assert norm.forward is not own
    assert norm.__dict__["forward"] is own
