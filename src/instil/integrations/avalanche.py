"""DBD as an Avalanche training strategy, for `new_instances_benchmark` streams.

Needs the extra: `pip install 'instil[avalanche]'` (avalanche-lib 0.6.0).

    from avalanche.benchmarks.scenarios.supervised import new_instances_benchmark
    from instil.integrations.avalanche import DBD

    benchmark = new_instances_benchmark(train_set, test_set, num_experiences=5, seed=0)
    strategy = DBD(model=model, optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9),
                   train_epochs=12, train_mb_size=64, options={"freeze_epochs": 10})
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)

Each experience is one phase of DBD (docs/METHOD.md §2; instil.methods.dbd): at its start
the teacher becomes a frozen copy of `strategy.model`, which then trains as the student on
L_FL + β·L_DIS through Avalanche's own loop (its optimizer, plugins and evaluators). After
the freezing period the student flows into the teacher by the EMA at the end of each epoch
(or every `ema_every` steps). At the end of the experience the teacher's weights are loaded
into `strategy.model`: the deployed model, which `eval` scores and the next experience
starts from (with `kc` off, the student is deployed). The loss is assembled from instil's
own functions (fused labels, dusting, distillation, batch statistics, consolidation), so it
is the loss of `instil run`'s dbd; tests/integrations/test_avalanche.py checks that they
are equal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from avalanche.training.templates import SupervisedTemplate
except ImportError as e:  # the extra is not installed
    raise ImportError("instil.integrations.avalanche needs Avalanche: "
                      "pip install 'instil[avalanche]'") from e

from instil.errors import InstilError
from instil.methods.dbd import (
    DBDOptions,
    batch_statistics,
    consolidate,
    distillation_kl,
    dust,
    fused_labels,
    soft_cross_entropy,
)

__all__ = ["DBD", "DBDOptions"]


class DBD(SupervisedTemplate):
    """Decision boundary-aware distillation with KC-EMA as an Avalanche strategy.

    Args:
        model, optimizer: as for any Avalanche strategy; `model` is the deployed model,
            and the optimizer trains it as the student.
        options: DBD's options, a `DBDOptions` or a mapping of its fields (`sigma`, `tau`,
            `alpha`, `freeze_epochs`, `fl`, `dis`, `kc`, ...); defaults as in `instil run`.
        **kwargs: the rest of SupervisedTemplate's keywords (`train_epochs`,
            `train_mb_size`, `eval_mb_size`, `device`, `plugins`, `evaluator`, ...); the
            criterion is used for evaluation only.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 options: DBDOptions | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        o = options if isinstance(options, DBDOptions) else DBDOptions(**(options or {}))
        if o.lean:
            raise InstilError("options.lean is a speed-up of instil's own loop; the Avalanche "
                              "strategy computes the four passes separately: leave it off")
        if o.student_start != "teacher":
            raise InstilError(f"options.student_start={o.student_start!r}: the Avalanche "
                              "strategy starts each student from the deployed model; leave "
                              "it 'teacher'")
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        if o.kc and self.train_epochs < o.freeze_epochs:
            raise InstilError(f"train_epochs={self.train_epochs} is below freeze_epochs="
                              f"{o.freeze_epochs}, so nothing would be consolidated; raise "
                              "train_epochs or lower options freeze_epochs")
        self.dbd_options = o
        self.teacher: nn.Module | None = None  # frozen, always in eval mode
        self.epochs_done = 0  # in the current experience
        self.steps_done = 0
        self.ema_steps = 0  # consolidations in the current experience

    def _before_training_exp(self, **kwargs: Any) -> None:
        super()._before_training_exp(**kwargs)  # data, model adaptation, optimizer, plugins
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        # A phase starts with a fresh optimiser, as in instil: the last student's momentum
        # would push the new one, which starts from the teacher.
        self.optimizer.state.clear()
        self.epochs_done = self.steps_done = self.ema_steps = 0

    def criterion(self) -> torch.Tensor:
        """L_FL + β·L_DIS on the current mini-batch while training (METHOD.md §2.4); the
        given criterion when evaluating."""
        if not self.is_training or self.teacher is None:
            return super().criterion()
        o = self.dbd_options
        x, y, student_logits = self.mb_x, self.mb_y, self.mb_output
        if o.fl:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            target = fused_labels(teacher_logits, y, o.lambda_in, o.lambda_out, o.tau)
            loss = soft_cross_entropy(student_logits, target, o.tau)
        else:
            loss = F.cross_entropy(student_logits, y)
        if o.dis and o.beta > 0:
            x_dust = dust(x, o.sigma)
            with torch.no_grad(), batch_statistics(self.teacher):
                teacher_dust = self.teacher(x_dust)
            with batch_statistics(self.model):
                student_dust = self.model(x_dust)
            loss = loss + o.beta * distillation_kl(teacher_dust, student_dust, o.tau)
        return loss

    def consolidating(self) -> bool:
        """Whether the freezing period of the current experience is over."""
        return self.dbd_options.kc and self.epochs_done >= self.dbd_options.freeze_epochs

    def consolidate(self) -> None:
        assert self.teacher is not None
        consolidate(self.teacher, self.model, self.dbd_options.keep_rate)
        self.ema_steps += 1

    def _after_training_iteration(self, **kwargs: Any) -> None:
        self.steps_done += 1
        k = self.dbd_options.ema_every
        if k and self.consolidating() and self.steps_done % k == 0:
            self.consolidate()
        super()._after_training_iteration(**kwargs)

    def _after_training_epoch(self, **kwargs: Any) -> None:
        self.epochs_done += 1
        # As instil's dbd: after epochs E_f, E_f + 1, ..., E (E - E_f + 1 consolidations).
        if not self.dbd_options.ema_every and self.consolidating():
            self.consolidate()
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        if self.dbd_options.kc and self.teacher is not None:
            self.model.load_state_dict(self.teacher.state_dict())  # deploy the teacher
        super()._after_training_exp(**kwargs)
