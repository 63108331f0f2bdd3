"""instil.integrations.avalanche: DBD as an Avalanche strategy (needs the avalanche extra)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("avalanche", reason="the avalanche extra is not installed "
                                        "(pip install -e '.[dev,avalanche]')")
# The strategies here log nothing (loggers=[]), which Avalanche warns about.
pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified")

from avalanche.benchmarks.scenarios.supervised import new_instances_benchmark  # noqa: E402
from avalanche.benchmarks.utils import as_classification_dataset  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from instil.errors import InstilError  # noqa: E402
from instil.integrations.avalanche import DBD  # noqa: E402
from instil.methods.dbd import DBD as InstilDBD  # noqa: E402
from instil.methods.dbd import DBDOptions  # noqa: E402

CENTRES = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])


class Blobs(torch.utils.data.TensorDataset):
    """Three 2-D Gaussian blobs, with the `targets` Avalanche reads."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        super().__init__(CENTRES[y] + 0.8 * torch.randn(n, 2, generator=g), y)
        self.targets = y.tolist()


def benchmark():
    return new_instances_benchmark(as_classification_dataset(Blobs(600, 0)),
                                   as_classification_dataset(Blobs(300, 1)),
                                   num_experiences=2, seed=0)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))


def strategy(model: nn.Module, epochs: int, plugins=(), **options) -> DBD:
    return DBD(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
               train_epochs=epochs, train_mb_size=32, eval_mb_size=300, plugins=list(plugins),
               evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
               options=options)


def accuracy(model: nn.Module, data: Blobs) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def test_dbd_learns_a_two_experience_new_instances_benchmark() -> None:
    bench = benchmark()
    assert len(list(bench.train_stream)) == 2
    model = mlp()
    before = accuracy(model, Blobs(300, 1))
    # From a random model, as no base training came first: a faster EMA than the default.
    s = strategy(model, epochs=4, freeze_epochs=2, alpha=0.5)
    for experience in bench.train_stream:
        s.train(experience)
        assert s.ema_steps == 3  # after epochs 2, 3 and 4
    scores = s.eval(bench.test_stream)
    stream_acc = next(v for k, v in scores.items() if k.startswith("Top1_Acc_Stream"))
    after = accuracy(s.model, Blobs(300, 1))
    assert before < 0.6 and after > 0.9
    assert stream_acc == pytest.approx(after)  # Avalanche scores the deployed model


class Snapshots(SupervisedPlugin):
    """The model at the start of each experience and the student after each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.start: dict[str, torch.Tensor] = {}
        self.student: dict[str, torch.Tensor] = {}

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.start = copy.deepcopy(strategy.model.state_dict())

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.student = copy.deepcopy(strategy.model.state_dict())


@pytest.mark.parametrize("kc, options, keep", [(True, {"alpha": 0.3}, 0.3),
                                               (False, {"alpha": 0.3}, 0.3),
                                               (True, {"half_life": 1.0}, 0.5)])
def test_the_deployed_model_is_the_ema_of_the_start_and_the_last_student(
        kc: bool, options: dict, keep: float) -> None:
    """One consolidation (freeze_epochs = train_epochs) with α = 0.3 (or a half-life of one
    step, α = 0.5): every experience deploys α·(the model it started from) + (1 − α)·(its
    last student), buffers included; the next one starts from that. Without KC the last
    student is deployed."""
    snap = Snapshots()
    s = strategy(mlp(), epochs=2, plugins=[snap], freeze_epochs=2, kc=kc, **options)
    for experience in benchmark().train_stream:
        s.train(experience)
        deployed = s.model.state_dict()
        moved = {k for k, v in snap.start.items() if not torch.equal(v, snap.student[k])}
        assert {"0.weight", "1.running_mean", "3.weight"} <= moved  # the student trained
        for key, start in snap.start.items():
            if start.is_floating_point():
                expected = keep * start + (1 - keep) * snap.student[key] if kc \
                    else snap.student[key]
                torch.testing.assert_close(deployed[key], expected, msg=key)
        assert s.ema_steps == (1 if kc else 0)


def differing_pair() -> tuple[nn.Module, nn.Module]:
    """A teacher and a student that differ in weights and BatchNorm statistics."""
    teacher = mlp(0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
        student.train()(torch.randn(64, 2) * 2 + 1)  # moves its running statistics
    return teacher.eval(), student


@pytest.mark.parametrize("options", [
    {}, {"fl": False}, {"dis": False},
    {"tau": 2.0, "sigma": 0.5, "beta": 0.3, "lambda_in": 0.5, "lambda_out": 2.0}])
def test_the_loss_is_instils_dbd_loss(options: dict) -> None:
    """On one batch, with one teacher and student and the same dusting noise, the strategy's
    loss, its gradients and the student's BatchNorm statistics afterwards are those of
    instil's own dbd."""
    teacher, student = differing_pair()
    torch.manual_seed(3)
    x, y = torch.randn(16, 2) * 2, torch.randint(0, 3, (16,))

    ours = InstilDBD(DBDOptions(**options))
    ours.teacher = copy.deepcopy(teacher).requires_grad_(False)
    ours.student = copy.deepcopy(student).train()
    torch.manual_seed(11)
    expected = ours.loss(x, y)
    expected.backward()

    s = strategy(copy.deepcopy(student), epochs=10, **options)
    s.teacher = copy.deepcopy(teacher).requires_grad_(False)
    s.is_training = True
    s.mbatch = [x, y, torch.zeros_like(y)]
    s.model.train()
    torch.manual_seed(11)
    s.mb_output = s.forward()
    got = s.criterion()
    got.backward()

    torch.testing.assert_close(got, expected)
    for (name, a), b in zip(s.model.named_parameters(), ours.student.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for (name, a), b in zip(s.model.state_dict().items(), ours.student.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert s.teacher.state_dict().keys() == teacher.state_dict().keys()
    for (name, a), b in zip(s.teacher.state_dict().items(), teacher.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # the teacher's statistics did not move


def test_an_epoch_budget_below_the_freezing_period_is_refused() -> None:
    with pytest.raises(InstilError, match="freeze_epochs=10"):
        strategy(mlp(), epochs=5)
    strategy(mlp(), epochs=5, kc=False)  # nothing to consolidate: fine
    with pytest.raises(InstilError, match="lean"):
        strategy(mlp(), epochs=12, lean=True)
    with pytest.raises(InstilError, match="student_start='carry': the Avalanche strategy"):
        strategy(mlp(), epochs=12, student_start="carry")
