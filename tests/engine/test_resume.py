"""--resume after an interruption ends with the numbers of an uninterrupted run, for every
method; a `kill -9` of a real process mid-phase included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import instil.engine.protocol as protocol
from instil.cli import main
from instil.methods import METHODS
from tests.conftest import write_image_folder

# Enough epochs that a dbd phase consolidates (freeze 1) and an interruption lands mid-phase;
# er's memory batches smaller than its memory, so that a resume must find its place in them.
RESUME_SETS = ["--set", "phase.epochs=3", "--set", "method_options.dbd.freeze_epochs=1",
               "--set", "method_options.er={replay_batch_size: 16}",
               "--set", "order_seeds=[0]", "--set", "save_models=false",
               "--set", "state_every_seconds=0"]


def numbers(out: Path) -> list[dict]:
    """Every metric of every phase of results.json, without the timings."""
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [{"method": r["method"], "parameters": r["parameters"], "base": r["base"],
             "phases": [{k: v for k, v in p.items() if k != "train_seconds"}
                        for p in r["phases"]]} for r in runs]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_after_an_interruption_gives_the_same_numbers(
        method: str, tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *RESUME_SETS,
            "--set", f"methods=[{method}]"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0

    saves = []
    real_save = protocol.save_state
    # Saves: after epochs 1 and 2 of a phase (the last epoch's is the phase's own) and at
    # its end. The 5th is one epoch into phase 2's second; joint trains once (epochs 1, 2,
    # end): its 2nd is mid-phase; onpro makes one pass a phase: its 2nd is phase 2's end.
    stop_at = 2 if method in ("joint", "onpro") else 5

    def save_then_stop(*a, **k) -> None:
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == stop_at:
            raise Interrupted

    monkeypatch.setattr(protocol, "save_state", save_then_stop)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        main(args + ["--out", str(cut)])
    monkeypatch.setattr(protocol, "save_state", real_save)
    assert not (cut / "results.json").exists() and list((cut / "state").glob("*.pkl"))
    capsys.readouterr()
    assert main(args + ["--out", str(cut)]) == 2  # an interrupted run is not overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert numbers(cut) == numbers(tmp_path / "whole")
    assert not list((cut / "state").glob("*.pkl"))  # cleaned up once finished


def test_an_interrupted_base_training_resumes_from_its_last_saved_epoch(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *RESUME_SETS,
            "--set", "methods=[finetune]", "--set", "base.epochs=6"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    # Another cache, so that the cut run trains M(0) itself rather than loading it.
    cut_args = args + ["--set", f"cache_dir={tmp_path / 'other-cache'}", "--out",
                       str(tmp_path / "cut")]
    saves = []
    real_save = protocol.save_state

    def save_then_stop(*a, **k) -> None:
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == 3:  # after base epoch 3 of 6
            raise Interrupted

    monkeypatch.setattr(protocol, "save_state", save_then_stop)
    with pytest.raises(Interrupted):
        main(cut_args)
    monkeypatch.setattr(protocol, "save_state", real_save)
    assert (tmp_path / "cut" / "state" / "base-0.pkl").exists()
    capsys.readouterr()
    assert main(cut_args + ["--resume"]) == 0
    assert "base order seed 0: resumed after phase 0, epoch 3" in capsys.readouterr().err
    assert numbers(tmp_path / "cut") == numbers(tmp_path / "whole")
    assert not (tmp_path / "cut" / "state").exists()


def test_kill_9_mid_phase_then_resume(tmp_path: Path, toy_args: list[str]) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
            "--set", "methods=[dbd]", "--set", "order_seeds=[0]", "--set", "n_phases=4",
            "--set", "phase.epochs=40", "--set", "method_options.dbd.freeze_epochs=5",
            "--set", "save_models=false", "--set", "state_every_seconds=0"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "instil", *args, "--out", str(cut)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = cut / "state" / "dbd-0.pkl"
    deadline = time.monotonic() + 60
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # land somewhere inside a phase
    process.send_signal(signal.SIGKILL)
    process.wait()
    if (cut / "results.json").exists():
        pytest.skip("the run finished before the kill landed")
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert numbers(cut) == numbers(tmp_path / "whole")


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_state(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from instil.methods.finetune import Finetune

    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *RESUME_SETS,
            "--set", "methods=[finetune]"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    real_loss, calls = Finetune.loss, []

    def poisoned(self, x, y):
        calls.append(1)
        loss = real_loss(self, x, y)
        return loss * float("nan") if len(calls) > 4 else loss  # phase 2 (3 steps a phase)

    monkeypatch.setattr(Finetune, "loss", poisoned)
    cut = tmp_path / "cut"
    capsys.readouterr()
    assert main(args + ["--out", str(cut)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "the loss became nan" in err[0] and "phase 2" in err[0]
    assert (cut / "state" / "finetune-0.pkl").exists()  # the last good epoch, kept
    monkeypatch.setattr(Finetune, "loss", real_loss)
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert numbers(cut) == numbers(tmp_path / "whole")


def test_a_full_disk_fails_before_training(tmp_path: Path, toy_args: list[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    import shutil as shutil_module
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9, 10**6))
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                 "--out", str(tmp_path / "out")]) == 2
    assert "MB free" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # M(0) was never trained


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_on_image_files_with_workers(
        workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File data sets augment in DataLoader workers: a resumed epoch must crop and flip
    each image as the uninterrupted run did."""
    write_image_folder(tmp_path / "imgs", 24, 8, noise=120, lift=120)
    args = ["run", "configs/toy2d.yaml", "--no-progress",
            "--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}",
            "--set", "data.options={}", "--set", "data.image_size=16",
            "--set", f"data.workers={workers}", "--set", "model.name=resnet_small",
            "--set", "model.options={widths: [4, 8, 8]}", "--set", "order_seeds=[0]",
            "--set", "methods=[dbd]", "--set", "n_phases=2", "--set", "base.epochs=2",
            "--set", "phase.epochs=3", "--set", "method_options.dbd.freeze_epochs=1",
            "--set", "base.batch_size=4", "--set", "phase.batch_size=4",
            "--set", "save_models=false", "--set", "state_every_seconds=0",
            "--set", f"cache_dir={tmp_path / 'c'}"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    saves, real_save = [], protocol.save_state

    def save_then_stop(*a, **k) -> None:
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == 5:  # two epochs into phase 2
            raise Interrupted

    monkeypatch.setattr(protocol, "save_state", save_then_stop)
    with pytest.raises(Interrupted):
        main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.setattr(protocol, "save_state", real_save)
    assert main(args + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert numbers(tmp_path / "cut") == numbers(tmp_path / "whole")


def test_state_is_saved_once_a_phase_when_epochs_are_quick(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    saved = []
    real_save = protocol.save_state
    monkeypatch.setattr(protocol, "save_state", lambda *a, **k: (saved.append(1),
                                                                  real_save(*a, **k)))
    assert main(["run", "configs/toy2d.yaml", "--no-progress", *toy_args,
                 "--set", "methods=[finetune]", "--set", "order_seeds=[0]",
                 "--set", "phase.epochs=4", "--out", str(tmp_path / "out")]) == 0
    assert len(saved) == 3  # one per phase: epochs of milliseconds are not worth a save
