"""--resume after an interruption ends with the numbers of an uninterrupted run, for every
method; a `kill -9` of a real process mid-phase included."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import instil.engine.protocol as protocol
from instil.cli import main
from instil.methods import METHODS
from tests.conftest import write_image_folder

from .interrupt import run_cut_at_save

# Enough epochs that a dbd phase consolidates (freeze 1) and an interruption lands mid-phase;
# er's memory batches smaller than its memory, so that a resume must find its place in them.
RESUME_SETS = ["--set", "phase.epochs=3", "--set", "method_options.dbd.freeze_epochs=1",
               "--set", "method_options.er={replay_batch_size: 16}",
               "--set", "order_seeds=[0]", "--set", "save_models=false",
               "--set", "state_every_seconds=0"]


def run_record(out: Path) -> dict:
    """The one run of results.json."""
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 1
    return runs[0]


def numbers(out: Path) -> list[dict]:
    """Every metric of every phase of results.json, without the timings (nor the epochs
    this process trained, which a resume must cut down)."""
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [{"method": r["method"], "parameters": r["parameters"], "base": r["base"],
             "phases": [{k: v for k, v in p.items() if k != "train_seconds"}
                        for p in r["phases"]]} for r in runs]



@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_after_an_interruption_gives_the_same_numbers(
        method: str, tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *RESUME_SETS,
            "--set", f"methods=[{method}]"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = run_record(tmp_path / "whole")
    assert whole["epochs_trained_here"] == whole["budget"]["epochs"] * len(whole["phases"])

    # Saves: after epochs 1 and 2 of a phase (the last epoch's is the phase's own) and at
    # its end. The 5th is one epoch into phase 2's second: 5 of 9 epochs trained; joint
    # trains once (epochs 1, 2, end): its 2nd is mid-phase, 2 of 3; onpro makes one pass a
    # phase: its 2nd is phase 2's end, 2 of 3.
    stop_at = 2 if method in ("joint", "onpro") else 5
    trained_before_the_cut = 2 if method in ("joint", "onpro") else 5
    cut = tmp_path / "cut"
    run_cut_at_save(monkeypatch, args + ["--out", str(cut)], stop_at)
    assert not (cut / "results.json").exists() and list((cut / "state").glob("*.pkl"))
    capsys.readouterr()
    assert main(args + ["--out", str(cut)]) == 2  # an interrupted run is not overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    assert numbers(cut) == numbers(tmp_path / "whole")
    # It went on from the saved state: only the epochs that remained were trained (a
    # rerun from scratch gives the same numbers, but trains them all).
    assert run_record(cut)["epochs_trained_here"] == \
        whole["epochs_trained_here"] - trained_before_the_cut
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
    # Stopped after base epoch 3 of 6.
    run_cut_at_save(monkeypatch, cut_args, 3)
    assert (tmp_path / "cut" / "state" / "base-0.pkl").exists()
    capsys.readouterr()
    assert main(cut_args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "base order seed 0: resumed after phase 0, epoch 3" in err
    assert "M(0) of order seed 0 trained (resumed: 3 of 6 epochs trained here)" in err
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
    # At least one epoch was saved before the kill (the state file existed): fewer remained.
    assert 0 < run_record(cut)["epochs_trained_here"] < 4 * 40


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
    # Phase 1 and phase 2's first epoch were kept: 9 - 4 epochs remained.
    assert run_record(cut)["epochs_trained_here"] == 5


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
    # Stopped two epochs into phase 2.
    run_cut_at_save(monkeypatch, args + ["--out", str(tmp_path / "cut")], 5)
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


class Placeholder:
    """What a resume state names rather than holds (the session, the data on the device)."""

    def __init__(self, name: str) -> None:
        self.name = name


def rewrite_state(path: Path, change: Callable[[Any], None]) -> None:
    """Loads the state file at `path` without a session, lets `change` alter it, saves it
    back: a state as another version of instil, or other options, would have written it."""
    class Loader(pickle.Unpickler):
        def persistent_load(self, pid: str) -> Placeholder:
            return Placeholder(pid)

    class Dumper(pickle.Pickler):
        def persistent_id(self, obj: Any) -> str | None:
            return obj.name if isinstance(obj, Placeholder) else None

    state = Loader(io.BytesIO(path.read_bytes())).load()
    change(state)
    buffer = io.BytesIO()
    Dumper(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    path.write_bytes(buffer.getvalue())


def damage(path: Path, how: str) -> str:
    """Damages the state file at `path`; returns what the refusal must say."""
    if how == "rewritten-unchanged":  # the control: rewriting alone must not be refused
        rewrite_state(path, lambda s: None)
        return ""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return ("unreadable resume state (UnpicklingError); delete it to rerun that method "
                "and seed from the start")
    if how == "another-version":
        rewrite_state(path, lambda s: setattr(s, "versions", {**s.versions, "instil": "0.0.1"}))
        return "written by {'instil': '0.0.1'"
    if how == "not-a-state":  # a readable pickle of something else
        path.write_bytes(pickle.dumps({"phase": 1}))
        return f"{path}: not an instil resume state; delete it"
    rewrite_state(path, lambda s: setattr(s.method, "options",
                                          dataclasses.replace(s.method.options, alpha=0.5)))
    return "dbd ran with options {"


@pytest.mark.parametrize("how", ["rewritten-unchanged", "truncated", "not-a-state",
                                 "another-version", "other-options"])
def test_a_state_that_cannot_be_resumed_is_refused_in_one_line(
        how: str, tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *RESUME_SETS,
            "--set", "methods=[dbd]", "--out", str(tmp_path / "cut")]
    # Stopped at the 6th save: M(0)'s epochs 1 and 2, phase 1's 1, 2 and end, phase 2's 1.
    run_cut_at_save(monkeypatch, args, 6)
    state = tmp_path / "cut" / "state" / "dbd-0.pkl"
    expected = damage(state, how)
    damaged = state.read_bytes()
    capsys.readouterr()
    if not expected:
        assert main(args + ["--resume"]) == 0
        assert run_record(tmp_path / "cut")["epochs_trained_here"] == 9 - 4
        return
    assert main(args + ["--resume"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(state) in errors[0] and expected in errors[0], errors
    if how == "another-version":
        assert errors[0].endswith("; delete it to rerun that method and seed from the start")
    assert state.read_bytes() == damaged  # left for the user to delete, not overwritten
    assert not (tmp_path / "cut" / "results.json").exists()


class Session:
    """Stands for what a run hands over by name: not pickled, given back as the same object."""


def test_the_run_is_saved_by_name_and_handed_back_as_itself(tmp_path: Path) -> None:
    from instil.engine.resume import RunState, load_state, save_state

    session = Session()
    state = RunState({"name": "toy"}, {"session": session, "phases": [1, 2]}, [], 1, None)
    path = tmp_path / "run" / "state" / "m-0.pkl"  # neither folder exists yet
    save_state(path, state, {"session": session})
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        pickle.loads(path.read_bytes())  # a name in the file, not a pickled session
    other = Session()
    loaded = load_state(path, {"session": other})
    assert loaded.method["session"] is other and loaded.method["phases"] == [1, 2]


def test_the_state_records_the_versions_it_must_be_read_back_by() -> None:
    from importlib.metadata import version

    import torch

    from instil.engine.resume import versions

    assert versions() == {"instil": version("instil"), "torch": torch.__version__}


def test_each_rank_has_its_own_state_file(tmp_path: Path) -> None:
    from instil.engine.distributed import World
    from instil.engine.resume import state_path

    assert state_path(tmp_path, "dbd", 3) == tmp_path / "state" / "dbd-3.pkl"
    assert state_path(tmp_path, "dbd", 3, World()) == tmp_path / "state" / "dbd-3.pkl"
    assert state_path(tmp_path, "dbd", 3, World(rank=1, size=2)) == \
        tmp_path / "state" / "dbd-3.rank1.pkl"


class Unpicklable:
    def __init__(self) -> None:
        self.step = lambda x: x  # a lambda cannot be pickled


def test_a_method_that_cannot_be_pickled_is_named_and_nothing_is_written(
        tmp_path: Path) -> None:
    from instil.engine.resume import RunState, save_state
    from instil.errors import InstilError

    path = tmp_path / "state" / "m-0.pkl"
    with pytest.raises(InstilError) as refused:
        save_state(path, RunState({}, Unpicklable(), [], 1, None), {})
    message = str(refused.value)
    assert message.startswith("Unpicklable cannot be saved for --resume (")
    assert message.endswith("); a method must keep only picklable state")
    assert not path.exists()
