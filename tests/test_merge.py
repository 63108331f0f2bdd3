"""Merging run folders that ran one protocol on different order seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instil.cli import main


def toy_run(out: Path, toy_args: list[str], *extra: str) -> dict:
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 *extra]) == 0
    return json.loads((out / "results.json").read_text())


def without_times(runs: list[dict]) -> list[dict]:
    """Runs as compared across processes: everything but the wall-clock fields."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("train_seconds", "wall_seconds", "ran_on")}
    return [{**strip(r), "phases": [strip(p) for p in r["phases"]]} for r in runs]


def test_merged_seeds_equal_one_run_of_both(tmp_path: Path, toy_args: list[str],
                                            capsys: pytest.CaptureFixture) -> None:
    whole = toy_run(tmp_path / "whole", toy_args)
    toy_run(tmp_path / "s1", toy_args, "--set", "order_seeds=[1]")
    toy_run(tmp_path / "s0", toy_args, "--set", "order_seeds=[0]")
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(out)]) == 0
    assert "order seeds [0, 1]" in capsys.readouterr().out
    merged = json.loads((out / "results.json").read_text())
    assert merged["config"] == whole["config"]
    assert merged["complete"] is True
    # Seed by seed, method by method, the same numbers as one process running both seeds.
    assert without_times(merged["runs"]) == without_times(whole["runs"])
    assert [r["n_orders"] for r in merged["summary"]] == [2, 2]
    for name in ("config.yaml", "manifest-0.json", "manifest-1.json", "summary.md",
                 "curves.png"):
        assert (out / name).is_file(), name
    assert merged["merged_from"] == [str(tmp_path / "s1"), str(tmp_path / "s0")]


def test_merge_refuses_other_protocols_and_twice_run_seeds(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    toy_run(tmp_path / "s0", toy_args, "--set", "order_seeds=[0]")
    toy_run(tmp_path / "s1", toy_args, "--set", "order_seeds=[1]", "--set", "phase.lr=0.2")
    toy_run(tmp_path / "s0b", toy_args, "--set", "order_seeds=[0]")
    capsys.readouterr()
    cases = [([tmp_path / "s0", tmp_path / "s1"], "ran phase.lr=0.2, "),
             ([tmp_path / "s0", tmp_path / "s0b"], "finetune on order seed 0 is also in"),
             ([tmp_path / "s0", tmp_path / "nothing"], "cannot read results")]
    for folders, message in cases:
        assert main(["merge", *map(str, folders), "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # A refused merge writes nothing.
    assert not (tmp_path / "m").exists()
    existing = tmp_path / "s0"
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s0b"), "--out",
                 str(existing)]) == 2
    assert "exists; choose another --out" in capsys.readouterr().err


def test_merge_joins_folders_that_ran_different_methods(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    # A seed on which only some methods ran still merges: each method counts its own seeds.
    toy_run(tmp_path / "s0", toy_args, "--set", "order_seeds=[0]", "--set", "methods=[joint]")
    toy_run(tmp_path / "s1", toy_args, "--set", "order_seeds=[1]")
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["config"]["methods"] == ["joint", "finetune"]
    assert {r["method"]: r["n_orders"] for r in merged["summary"]} == {"joint": 2,
                                                                       "finetune": 1}
    assert [(r["order_seed"], r["method"]) for r in merged["runs"]] == [
        (0, "joint"), (1, "joint"), (1, "finetune")]


def test_merge_keeps_only_the_methods_asked_for(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    # Seed 0 was stopped before joint (results.json keeps finetune only, complete: false):
    # merged for finetune alone, nothing of the merge is missing.
    toy_run(tmp_path / "s0", toy_args, "--set", "order_seeds=[0]",
            "--set", "methods=[finetune]")
    partial = json.loads((tmp_path / "s0" / "results.json").read_text())
    partial["config"]["methods"] = ["finetune", "joint"]
    partial["complete"] = False
    (tmp_path / "s0" / "results.json").write_text(json.dumps(partial))
    toy_run(tmp_path / "s1", toy_args, "--set", "order_seeds=[1]",
            "--set", "methods=[joint, finetune]")
    toy_run(tmp_path / "s2", toy_args, "--set", "order_seeds=[2]", "--set", "methods=[joint]")
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(out),
                 "--methods", "finetune"]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["config"]["methods"] == ["finetune"]
    assert merged["config"]["order_seeds"] == [0, 1]
    assert [(r["order_seed"], r["method"]) for r in merged["runs"]] == [
        (0, "finetune"), (1, "finetune")]
    assert merged["complete"] is True
    # Asked for joint as well, seed 0 lacks it: not complete.
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                 str(tmp_path / "both"), "--methods", "joint,finetune"]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert both["config"]["methods"] == ["joint", "finetune"]
    assert both["complete"] is False
    cases = [("s0", "s1", "finetun", "--methods finetun: not a method of"),
             ("s0", "s2", "finetune", "s2: ran none of --methods finetune")]
    for a, b, methods, message in cases:
        assert main(["merge", str(tmp_path / a), str(tmp_path / b), "--out",
                     str(tmp_path / "m"), "--methods", methods]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_merge_compares_a_methods_settings_only_where_it_is_merged(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    # A baseline rerun with a tuned budget (new folder) merges with the untouched methods
    # of an older folder: the settings of a method count only between folders that ran it.
    toy_run(tmp_path / "old", toy_args, "--set", "methods=[finetune, joint]")
    old = json.loads((tmp_path / "old" / "results.json").read_text())
    # The older folder predates a config key: today's default fills it in.
    del old["config"]["also_evaluate_every_phase"]
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    toy_run(tmp_path / "new", toy_args, "--set", "methods=[finetune]",
            "--set", "method_budgets.finetune.lr=0.003")
    capsys.readouterr()
    kept = tmp_path / "kept"
    assert main(["merge", str(tmp_path / "old"), "--methods", "joint", "--out",
                 str(kept)]) == 0
    assert json.loads((kept / "results.json").read_text())["config"]["methods"] == ["joint"]
    out = tmp_path / "merged"
    assert main(["merge", str(kept), str(tmp_path / "new"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert merged["config"]["method_budgets"] == {"finetune": {"lr": 0.003}}
    assert merged["config"]["also_evaluate_every_phase"] is True
    assert sorted((r["method"], r["order_seed"]) for r in merged["runs"]) == sorted(
        [("joint", s) for s in (0, 1)] + [("finetune", s) for s in (0, 1)])
    new = json.loads((tmp_path / "new" / "results.json").read_text())
    assert [r for r in merged["runs"] if r["method"] == "finetune"] == new["runs"]
    # The same method from two folders with other settings is refused, naming the key.
    toy_run(tmp_path / "s5", toy_args, "--set", "methods=[finetune]",
            "--set", "order_seeds=[5]")
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "new"), str(tmp_path / "s5"), "--out",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "ran finetune with method_budgets.lr=None" in err, err
    assert "with 0.003; runs of a method merge only with the same settings" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
    # The same seed's split under one name must be the same file.
    manifest = kept / "manifest-0.json"
    split = manifest.read_text()
    manifest.write_text(split.replace("0", "1", 1))
    assert main(["merge", str(kept), str(tmp_path / "new"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "split the data differently under one name" in capsys.readouterr().err
    # One order seed's runs must start from one M(0): a retrained M(0) (another thread
    # count) scores differently, and a paired comparison would compare two starts.
    manifest.write_text(split)
    other = json.loads((tmp_path / "new" / "results.json").read_text())
    other["runs"][0]["base"]["acc_test"] += 0.01
    (tmp_path / "new" / "results.json").write_text(json.dumps(other))
    assert main(["merge", str(kept), str(tmp_path / "new"), "--out",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "finetune on order seed 0 started from an M(0) scoring" in err, err
    assert "rerun it from the same M(0)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    # One folder without --methods is not a merge.
    assert main(["merge", str(tmp_path / "new"), "--out", str(tmp_path / "m")]) == 2
    assert "or one with --methods" in capsys.readouterr().err


def test_merge_compares_settings_of_the_methods_a_folder_ran_with_what_they_inherit(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    a = toy_run(tmp_path / "a", toy_args, "--set", "methods=[finetune]",
                "--set", "order_seeds=[0]")
    # A folder stopped before its lwf ran lists lwf without having used lwf's settings.
    a["config"]["methods"] = ["finetune", "lwf"]
    (tmp_path / "a" / "results.json").write_text(json.dumps(a))
    toy_run(tmp_path / "b", toy_args, "--set", "methods=[lwf]", "--set", "order_seeds=[1]",
            "--set", "method_options.lwf.lambda_kd=2")
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "ab")]) == 0
    merged = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert merged["config"]["method_options"]["lwf"] == {"lambda_kd": 2}
    # dbd-nofl inherits method_options.dbd: two folders that set it differently ran
    # different dbd-nofl, though neither names dbd-nofl's own options.
    for seed, sigma in ((0, 0.5), (1, 1.0)):
        toy_run(tmp_path / f"n{seed}", toy_args, "--set", "methods=[dbd-nofl]",
                "--set", f"order_seeds=[{seed}]", "--set", "method_options.dbd.freeze_epochs=1",
                "--set", f"method_options.dbd.sigma={sigma}")
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "n0"), str(tmp_path / "n1"),
                 "--out", str(tmp_path / "n")]) == 2
    assert "ran dbd-nofl with method_options.sigma=1.0" in capsys.readouterr().err
