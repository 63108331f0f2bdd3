"""epochs.jsonl: a line per (method, order seed, phase, epoch) with the method's declared
terms; a resumed run continues it without duplicates or gaps; DBD's terms by hand;
losses.png from `instil report`; a fixed, distinct colour per method; TensorBoard's
one-line error."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instil.cli import main
from instil.engine.epochs import KEY, read_epochs
from instil.methods import METHODS, create_method
from instil.methods.base import PhaseContext

from .interrupt import run_cut_at_save

SETS = ["--set", "phase.epochs=3", "--set", "method_options.dbd.freeze_epochs=1",
        "--set", "method_options.er={replay_batch_size: 16}", "--set", "order_seeds=[0]",
        "--set", "save_models=false", "--set", "state_every_seconds=0"]
DECLARED = {"dbd": {"l_fl", "l_dis", "dis_share", "outer_fraction", "teacher_acc",
                    "ema_steps", "theta_distance"},
            "lwf": {"ce", "kd"}, "ewc": {"ce", "penalty"}, "er": {"ce", "memory_share"},
            "finetune": {"ce"}, "base": {"ce"}}
COMMON = {*KEY, "lr", "seconds", "images_per_s", "loss"}


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


def test_one_line_per_epoch_with_the_declared_terms(tmp_path: Path,
                                                    toy_args: list[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *SETS,
                 "--set", "methods=[dbd, lwf, ewc, er, finetune]", "--out", str(out)]) == 0
    records = lines(out)
    keys = [tuple(r[k] for k in KEY) for r in records]
    assert len(keys) == len(set(keys))
    expected = {("base", 0, 0, e) for e in (1, 2, 3)} | {
        (m, 0, t, e) for m in ("dbd", "lwf", "ewc", "er", "finetune")
        for t in (1, 2, 3) for e in (1, 2, 3)}
    assert set(keys) == expected
    for r in records:
        assert set(r) == COMMON | DECLARED[r["method"]], r["method"]
        assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["lr"] > 0
    for r in records:
        if r["method"] in ("finetune", "base"):
            assert r["ce"] == pytest.approx(r["loss"])
        if r["method"] == "dbd":
            assert r["l_fl"] + r["l_dis"] == pytest.approx(r["loss"], rel=1e-5)  # beta 1
            assert r["outer_fraction"] + r["teacher_acc"] == pytest.approx(1)
            # freeze_epochs 1: an EMA step after every epoch of the phase
            assert r["ema_steps"] == r["epoch"]
            assert r["theta_distance"] > 0
        if r["method"] == "er":
            assert r["memory_share"] == pytest.approx(16 / (64 + 16))
    # the lr follows the cosine schedule down within a phase
    lwf = [r["lr"] for r in records if r["method"] == "lwf" and r["phase"] == 1]
    assert lwf[0] > lwf[1] > lwf[2]



@pytest.mark.parametrize("method", ["dbd", "er"])
def test_a_resumed_run_leaves_no_duplicate_and_no_gap(
        method: str, tmp_path: Path, toy_args: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *SETS,
            "--set", "state_every_seconds=1000", "--set", f"methods=[{method}]"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    # Stopped at the end of phase 2 (phase ends save; epochs do not).
    run_cut_at_save(monkeypatch, args + ["--out", str(cut)], 2)
    before = lines(cut)
    assert max(r["phase"] for r in before if r["method"] == method) == 2
    # a line cut short by a kill is dropped too
    with open(cut / "epochs.jsonl", "a") as f:
        f.write('{"method": "' + method + '", "order_')
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    after, whole = lines(cut), lines(tmp_path / "whole")
    key = [tuple(r[k] for k in KEY) for r in after if r["method"] == method]
    assert key == [tuple(r[k] for k in KEY) for r in whole if r["method"] == method]
    # the numbers of the resumed epochs are the uninterrupted run's
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in after
            if r["method"] == method] == \
        [{k: v for k, v in r.items() if k not in drop} for r in whole
         if r["method"] == method]


def test_a_resume_mid_phase_drops_the_epochs_after_the_saved_one(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *SETS,
            "--set", "methods=[finetune]"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    # Stopped in phase 2, after its second epoch.
    run_cut_at_save(monkeypatch, args + ["--out", str(cut)], 5)
    # a stale line past the saved point, as a kill between append and save leaves it
    stale = {**lines(cut)[-1], "epoch": 3, "loss": -1.0}
    with open(cut / "epochs.jsonl", "a") as f:
        f.write(json.dumps(stale) + "\n")
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    # (M(0) came from the cache here: no base lines)
    got = [tuple(r[k] for k in KEY) for r in lines(cut)]
    assert got == [tuple(r[k] for k in KEY) for r in lines(tmp_path / "whole")
                   if r["method"] == "finetune"]
    assert all(r["loss"] >= 0 for r in lines(cut))


def tiny_dbd(**options) -> tuple:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    method = create_method("dbd", {"freeze_epochs": 0, **options})
    method.begin_phase(model, PhaseContext(1, 1, lambda: copy.deepcopy(model)))
    with torch.no_grad():  # the student differs from the teacher
        for p in method.student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    return method, x, y


def test_dbd_terms_equal_a_hand_computation_on_a_fixed_batch() -> None:
    method, x, y = tiny_dbd(beta=0.5, tau=2.0)
    x_dust = x + torch.randn_like(x)
    method.student.train()
    loss = method.full_loss(x, x_dust, y).detach()
    terms = method.terms()
    with torch.no_grad():
        t = method.teacher(x)
    outer = (t.argmax(1) != y).float().mean()
    assert float(terms["outer_fraction"]) == pytest.approx(float(outer))
    assert float(terms["teacher_acc"]) == pytest.approx(1 - float(outer))
    # L_DIS by hand: τ² KL(σ(T(x̃)/τ) ‖ σ(S(x̃)/τ)), both with the dusted batch's statistics
    teacher, student = copy.deepcopy(method.teacher).train(), copy.deepcopy(method.student)
    for m in (*teacher.modules(), *student.modules()):
        if isinstance(m, nn.BatchNorm1d):
            m.track_running_stats = False
    with torch.no_grad():
        p = F.softmax(teacher(x_dust) / 2, 1)
        q = F.log_softmax(student(x_dust) / 2, 1)
    l_dis = 4 * (p * (p.log() - q)).sum(1).mean()
    assert float(terms["l_dis"]) == pytest.approx(float(l_dis), rel=1e-5)
    assert float(terms["dis_share"]) == pytest.approx(0.5 * float(l_dis) / float(loss),
                                                      rel=1e-5)
    assert float(terms["l_fl"]) == pytest.approx(float(loss) - 0.5 * float(l_dis), rel=1e-5)
    assert method.terms() == {}  # handed over once
    # epoch facts: the EMA steps and ‖θ_T − θ_S‖ by hand after one
    method.end_epoch(0)
    gap = torch.cat([(a - b).flatten() for a, b in zip(method.teacher.parameters(),
                                                       method.student.parameters())])
    facts = method.epoch_facts()
    assert facts["ema_steps"] == 1
    assert facts["theta_distance"] == pytest.approx(float(gap.norm()), rel=1e-5)


def test_dbd_without_fl_records_ce_and_no_teacher_terms() -> None:
    method, x, y = tiny_dbd(fl=False, dis=False)
    method.student.train()
    loss = method.loss(x, y).detach()
    terms = method.terms()
    assert set(terms) == set(method.term_names()) == {"ce"}
    assert float(terms["ce"]) == pytest.approx(float(loss))


def test_report_draws_losses_and_the_summary_links_it(tmp_path: Path, toy_args: list[str],
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                 "--set", "methods=[finetune, lwf]", "--out", str(out)]) == 0
    (out / "losses.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[losses.png](losses.png)" in (out / "summary.md").read_text()
    assert {r["order_seed"] for r in read_epochs(out)} == {0, 1}


def test_every_registered_method_has_its_own_colour_and_a_fixed_one() -> None:
    from instil.viz.style import COLOURS, colour_of, marker_of

    names = sorted(METHODS)
    assert len({colour_of(n) for n in names}) == len(names)
    assert all(n in COLOURS for n in names)  # fixed by name, not by position in a list
    assert colour_of("dbd") == COLOURS["dbd"] and marker_of("dbd") == marker_of("dbd")
    assert colour_of("someone-elses") == colour_of("someone-elses")


def test_tensorboard_without_the_extra_is_a_one_line_error(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                 "--set", "log.tensorboard=true", "--out", str(tmp_path / "tb")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "pip install 'instil[tensorboard]'" in err[0]
    assert not (tmp_path / "cache").exists()  # refused before any training


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed")
def test_tensorboard_writes_a_folder_per_method_and_seed(tmp_path: Path,
                                                         toy_args: list[str]) -> None:
    out = tmp_path / "tb"
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                 "--set", "log.tensorboard=true", "--set", "methods=[finetune]",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == \
        ["base-0", "base-1", "finetune-0", "finetune-1"]
