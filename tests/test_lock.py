"""One writer per output: a second `instil run` into a busy folder is refused, a killed
holder frees it, runs that need one M(0) at once train it once, and results.json keeps the
runs another process wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from instil.checkpoint import load_checkpoint
from instil.cli import main
from instil.engine import protocol
from instil.lock import file_lock, file_lock_file, folder_lock, folder_lock_file, waiting_lock
from tests.test_merge import toy_run

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ONE_SEED = ("--set", "order_seeds=[0]")


def instil_process(args: list[str], stderr=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "instil", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def wait_for(condition, what: str, process: subprocess.Popen | None = None,
             seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process is None or process.poll() is None, f"exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def refusal(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_second_run_into_a_running_folder_is_refused_and_the_first_keeps_its_results(
        tmp_path: Path, toy_args: list[str]) -> None:
    """The issue's scenario: dbd runs into runs/race, joint is started into it meanwhile."""
    out = tmp_path / "race"
    common = ["run", "configs/toy2d.yaml", "--out", str(out), "--resume", "--no-progress",
              *toy_args, *ONE_SEED, "--set", "method_options.dbd.freeze_epochs=1"]
    first = instil_process(common + ["--set", "methods=[dbd]"])
    lock = folder_lock_file(out)
    try:
        wait_for(lambda: holder_pid(lock) == first.pid, "the first run's lock", first)
        # Frozen while it holds the lock, so that the second surely meets a running first.
        first.send_signal(signal.SIGSTOP)
        assert holder_pid(lock) == first.pid
        second = subprocess.run([sys.executable, "-m", "instil", *common,
                                 "--set", "methods=[joint]"], cwd=ROOT, env=ENV,
                                capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    line, = second.stderr.strip().splitlines()
    assert line.startswith(f"instil: error: {out} is in use by another instil process (pid "
                           f"{first.pid} on ")
    assert "--set 'methods=[dbd]'" in line and line.endswith(
        "; wait for it to finish or use another --out")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["order_seed"]) for r in results["runs"]] == [("dbd", 0)]
    assert results["complete"] is True
    assert yaml.safe_load((out / "config.yaml").read_text())["methods"] == ["dbd"]
    assert not (out / "models" / "joint-0.pt").exists() and not (out / "state").exists()
    assert not lock.exists()  # let go at the end


def test_kill_9_of_the_holder_frees_the_folder(tmp_path: Path, toy_args: list[str],
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from instil.lock import folder_lock
            with folder_lock(Path({str(out)!r})):
                print("held", flush=True)
                time.sleep(120)
            """)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
            *ONE_SEED]
    try:
        assert holder.stdout.readline() == "held\n"
        line = refusal(capsys, args)
        assert f"{out} is in use by another instil process (pid {holder.pid} on " in line
        assert not (out / "results.json").exists() and not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert folder_lock_file(out).exists()  # left behind by the killed holder, not locked
    assert main(args) == 0
    assert (out / "results.json").exists() and not folder_lock_file(out).exists()


def test_merge_and_promote_refuse_an_output_another_process_writes(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    toy_run(tmp_path / "s0", toy_args, "--set", "order_seeds=[0]")
    toy_run(tmp_path / "s1", toy_args, "--set", "order_seeds=[1]")
    capsys.readouterr()
    merged = tmp_path / "merged"
    with folder_lock(merged):  # this test process plays the other writer
        line = refusal(capsys, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                                "--out", str(merged)])
        assert f"{merged} is in use by another instil process (pid {os.getpid()} " in line
        assert sorted(p.name for p in merged.iterdir()) == [".instil.lock"]
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                 str(merged)]) == 0
    # promote locks NEW_CKPT.lock before it reads anything (the model need not exist).
    promoted = tmp_path / "promoted.pt"
    with file_lock(promoted):
        line = refusal(capsys, ["promote", "--model", str(tmp_path / "none.pt"),
                                "--new-data", str(tmp_path), "--out", str(promoted)])
        assert f"{promoted} is in use by another instil process (pid {os.getpid()} " in line
    assert not promoted.exists()


def test_report_reads_a_folder_while_its_run_holds_it(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    toy_run(out, toy_args, *ONE_SEED)
    with folder_lock(out):
        assert main(["report", str(out)]) == 0


def test_two_runs_needing_one_m0_at_once_train_it_once(
        tmp_path: Path, toy_args: list[str]) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, *ONE_SEED,
            "--set", "methods=[finetune]"]
    # A run beforehand names the cache entry of this M(0).
    toy_run(tmp_path / "probe", toy_args, *ONE_SEED, "--set", "methods=[finetune]")
    entry, = (tmp_path / "cache" / "base").glob("*.pt")
    entry.unlink()
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}
    runs = {}
    # This test process plays a third run that is training the M(0) when both start.
    with waiting_lock(file_lock_file(entry), lambda holder: None):
        for name, log in logs.items():
            runs[name] = instil_process(args + ["--out", str(tmp_path / name)],
                                        stderr=log.open("w"))
        for name, log in logs.items():
            wait_for(lambda log=log: "waiting for another process training M(0) of order "
                     f"seed 0 (pid {os.getpid()} " in log.read_text(), f"{name} to wait",
                     runs[name])
    assert [runs[name].wait(timeout=120) for name in logs] == [0, 0]
    errs = [log.read_text() for log in logs.values()]
    trained = ["M(0) of order seed 0 trained" in err for err in errs]
    loaded = [f"M(0) of order seed 0 from the cache {entry}" in err for err in errs]
    assert sorted(trained) == [False, True] and loaded == [not t for t in trained], errs
    # One whole entry, no temporary file or lock left, and both runs start from it.
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]
    cached = torch.load(entry, weights_only=True)["model"]
    for name in logs:
        m0 = load_checkpoint(tmp_path / name / "models" / "m0-0.pt").state
        assert cached.keys() == m0.keys()
        assert all(torch.equal(cached[k], m0[k]) for k in cached)


@pytest.mark.parametrize("damage", ["truncated", "other shapes"])
def test_an_unreadable_cache_entry_is_trained_again_never_loaded(
        damage: str, tmp_path: Path, toy_args: list[str],
        capsys: pytest.CaptureFixture) -> None:
    toy_run(tmp_path / "first", toy_args, *ONE_SEED, "--set", "methods=[finetune]")
    entry, = (tmp_path / "cache" / "base").glob("*.pt")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    else:  # loads, yet not into this model: zeros first, then one tensor of another shape
        state = torch.load(entry, weights_only=True)
        last = list(state["model"])[-1]
        state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
        state["model"][last] = torch.zeros(7)
        torch.save(state, entry)
    capsys.readouterr()
    toy_run(tmp_path / "again", toy_args, *ONE_SEED, "--set", "methods=[finetune]")
    err = capsys.readouterr().err
    assert f"{entry}: unreadable cached base model (" in err and "training it again" in err
    assert "M(0) of order seed 0 trained" in err
    # Trained from the fresh model, not from what the broken entry half-loaded into it.
    first, again = (json.loads((tmp_path / name / "results.json").read_text())["runs"][0]
                    for name in ("first", "again"))
    assert again["base"] == first["base"]
    a = load_checkpoint(tmp_path / "first" / "models" / "m0-0.pt").state
    b = torch.load(entry, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_results_json_keeps_a_run_another_process_wrote(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    other = toy_run(tmp_path / "other", toy_args, "--set", "order_seeds=[1]",
                    "--set", "methods=[joint]")
    out = tmp_path / "mine"
    real_start = protocol.start_seed

    def another_writer_meanwhile(session, order_seed):
        # A writer that bypassed the lock (say, on another machine) wrote results.json.
        (out / "results.json").write_text((tmp_path / "other" / "results.json").read_text())
        return real_start(session, order_seed)

    monkeypatch.setattr(protocol, "start_seed", another_writer_meanwhile)
    capsys.readouterr()
    mine = toy_run(out, toy_args, *ONE_SEED, "--set", "methods=[finetune]")
    assert [(r["method"], r["order_seed"]) for r in mine["runs"]] == [("finetune", 0),
                                                                     ("joint", 1)]
    assert mine["runs"][1] == other["runs"][0]
    assert "kept 1 run(s) that another process wrote into it: joint (order seed 1)" in \
        capsys.readouterr().err
    for config in (mine["config"], yaml.safe_load((out / "config.yaml").read_text())):
        assert config["methods"] == ["finetune", "joint"] and config["order_seeds"] == [0, 1]
    assert mine["complete"] is False  # finetune on seed 1 and joint on seed 0 never ran
    assert {row["method"] for row in mine["summary"]} == {"finetune", "joint"}


def test_results_json_of_another_protocol_is_moved_aside_not_mixed_in(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    toy_run(tmp_path / "other", toy_args, *ONE_SEED, "--set", "methods=[joint]",
            "--set", "phase.lr=0.2")
    foreign = (tmp_path / "other" / "results.json").read_text()
    out = tmp_path / "mine"
    real_start = protocol.start_seed

    def another_writer_meanwhile(session, order_seed):
        (out / "results.json").write_text(foreign)
        return real_start(session, order_seed)

    monkeypatch.setattr(protocol, "start_seed", another_writer_meanwhile)
    mine = toy_run(out, toy_args, *ONE_SEED, "--set", "methods=[finetune]")
    assert [r["method"] for r in mine["runs"]] == ["finetune"]
    aside, = out.glob("results-replaced-*.json")
    assert aside.read_text() == foreign
