"""The command line end to end on tiny synthetic data, and its answers to bad input."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from instil.cli import main
from tests.conftest import write_fmnist, write_image_folder


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


def test_toy_protocol_end_to_end(tmp_path: Path, toy_args: list[str],
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| finetune |" in printed and "| joint |" in printed
    for name in ("config.yaml", "manifest-0.json", "manifest-1.json", "results.json",
                 "summary.md", "curves.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    assert results["config"]["n_phases"] == 3
    runs = {(r["method"], r["order_seed"]): r for r in results["runs"]}
    assert set(runs) == {("finetune", 0), ("finetune", 1), ("joint", 0), ("joint", 1)}
    assert [p["phase"] for p in runs[("finetune", 0)]["phases"]] == [1, 2, 3]
    # Joint retrains only after the last phase by default, and says it used old data.
    assert [p["phase"] for p in runs[("joint", 0)]["phases"]] == [3]
    assert runs[("joint", 0)]["uses_old_data"] and not runs[("finetune", 0)]["uses_old_data"]
    assert runs[("joint", 0)]["phases"][0]["n_train"] == 600
    # What ran it, so that timings are read against their machine.
    assert re.fullmatch(r".* CPU, \d+ threads?, 1 process\(es\)", runs[("finetune", 0)]["ran_on"])
    phase = runs[("finetune", 1)]["phases"][-1]
    for key in ("acc_test", "pp", "acc_base", "f", "f_rel", "nfr", "train_seconds"):
        assert isinstance(phase[key], float)
    base = runs[("finetune", 1)]["base"]
    assert phase["pp"] == pytest.approx(phase["acc_test"] - base["acc_test"])
    assert phase["f"] == pytest.approx(base["acc_base"] - phase["acc_base"])
    # Both methods of a seed start from the same cached M(0).
    assert runs[("joint", 1)]["base"] == base
    summary = {row["method"]: row for row in results["summary"]}
    assert summary["finetune"]["n_orders"] == 2
    for key in ("acc_test_mean", "pp_mean", "pp_ci95", "f_mean", "f_ci95", "nfr_mean"):
        assert key in summary["finetune"]
    assert "| finetune | no | 4.8k | 3 |" in (out / "summary.md").read_text()


def test_rerun_is_identical_and_reuses_the_cached_base(tmp_path: Path, toy_args: list[str],
                                                       capsys: pytest.CaptureFixture) -> None:
    results = []
    for name in ("a", "b"):
        assert main(["run", "configs/toy2d.yaml", "--out", str(tmp_path / name),
                     "--no-progress", *toy_args]) == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
        err = capsys.readouterr().err
        assert ("M(0) of order seed 0 trained" in err) == (name == "a")
        # The rerun names where its M(0) was trained: the key leaves the threads out.
        cached = re.search(r"M\(0\) of order seed 0 from the cache \S+ \(trained on .+ CPU, "
                           r"\d+ threads?, 1 process\(es\)\)", err)
        assert (cached is not None) == (name == "b")
    strip = [[{k: v for k, v in p.items() if k != "train_seconds"} for r in res["runs"]
              for p in r["phases"]] for res in results]
    assert strip[0] == strip[1]


def test_joint_every_phase_on_request(tmp_path: Path, toy_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "methods=[joint]", "--set", "order_seeds=[0]",
                 "--set", "method_options.joint.every_phase=true"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert [p["phase"] for p in run["phases"]] == [1, 2, 3]
    assert [p["n_train"] for p in run["phases"]] == [400, 500, 600]


def test_fmnist_files_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The image path (IDX files, device-resident uint8, crop and flip, the small ResNet)."""
    root = write_fmnist(tmp_path / "fm", n_train=200, n_test=100)
    out = tmp_path / "out"
    code = main(["run", "configs/fmnist-quick.yaml", "--out", str(out), "--no-progress",
                 "--set", f"data.root={root}", "--set", f"cache_dir={tmp_path / 'c'}",
                 "--set", "device=cpu", "--set", "n_phases=2", "--set", "base.epochs=2",
                 "--set", "phase.epochs=1", "--set", "base.batch_size=32",
                 "--set", "phase.batch_size=32", "--set", "method_options.dbd.freeze_epochs=1"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"finetune", "dbd", "joint"}


def error_of(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code, err = run_cli(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_set_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = error_of(["run", "configs/toy2d.yaml", "--out", str(tmp_path),
                     "--set", "phase.epoch=3"], capsys)
    assert "unknown config key 'phase.epoch'" in line


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("instil.data.fmnist.SYSTEM_DIR", tmp_path / "none")
    monkeypatch.delenv("INSTIL_DATA", raising=False)
    line = error_of(["run", "configs/fmnist-quick.yaml", "--out", str(tmp_path / "o"),
                     "--no-progress", "--set", f"data.root={tmp_path / 'absent'}"], capsys)
    assert "absent" in line and "apt-get install" in line


def test_truncated_idx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_fmnist(tmp_path / "fm", n_train=40, n_test=20, gz=False)
    path = root / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    line = error_of(["run", "configs/fmnist-quick.yaml", "--out", str(tmp_path / "o"),
                     "--no-progress", "--set", f"data.root={root}"], capsys)
    assert "train-labels-idx1-ubyte" in line and "truncated" in line


def write_cifar(root: Path, labels: list[int]) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    n = len(labels)
    for name in ("train", "test"):
        content = {b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": labels,
                   b"coarse_labels": [0] * n, b"filenames": [b"x.png"] * n,
                   b"batch_label": b"batch"}
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_cifar_label_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_cifar(tmp_path / "c", [1, 5, 100, 3])
    line = error_of(["run", "configs/cifar100-iil10.yaml", "--out", str(tmp_path / "o"),
                     "--no-progress", "--set", f"data.root={root}", "--set", "device=cpu"],
                    capsys)
    assert "train" in line and "100" in line


def test_unreadable_image_in_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        for i in range(3):
            (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"not an image at all")
    line = error_of(["run", "configs/toy2d.yaml", "--out", str(tmp_path / "o"), "--no-progress",
                     "--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}",
                     "--set", "data.options={}",
                     "--set", "model.name=resnet18"], capsys)
    assert "broken.png" in line


def test_error_has_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "instil", "run", "configs/toy2d.yaml",
                           "--out", str(tmp_path), "--set", "base.nope=1"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()] and "base.nope" in proc.stderr


def test_unwritable_output_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 toy_args: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = error_of(["run", "configs/toy2d.yaml", "--out", str(blocker / "sub"),
                     "--no-progress", *toy_args], capsys)
    assert "cannot write the output folder" in line


def test_list_shows_registries(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fmnist", "cifar100", "imagenet100", "imagefolder", "toy2d", "resnet_small",
                 "resnet18_cifar", "resnet50", "mlp", "finetune", "joint", "fmnist-iil10"):
        assert name in out


def test_list_shows_the_presets_run_takes_by_name(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    listed = capsys.readouterr().out.split("presets (")[1].splitlines()[1:]
    names = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert [line.strip() for line in listed] == names


def test_run_takes_a_preset_by_name(tmp_path: Path, toy_args: list[str],
                                    capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from instil.config import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ here: the name alone finds the preset
    sets = [*toy_args, "--set", "order_seeds=[0]", "--set", "methods=[finetune]"]
    assert main(["run", "toy2d", "--out", "out", "--no-progress", *sets]) == 0, \
        capsys.readouterr().err
    config = json.loads(Path("out/results.json").read_text())["config"]
    expected = load_config(Path(__file__).parents[1] / "configs" / "toy2d.yaml", sets[1::2])
    assert config == json.loads(json.dumps(expected.to_dict()))
    capsys.readouterr()
    line = error_of(["run", "toy2", "--out", "o2", *sets], capsys)
    assert "toy2: neither a config file nor a preset" in line and "toy2d" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_streams_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         workers: int) -> None:
    """The file path: PNGs decoded by DataLoader workers, normalised on the device."""
    write_image_folder(tmp_path / "imgs", 12, 4, noise=60, lift=180)
    out = tmp_path / "out"
    code = main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress",
                 "--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'imgs'}",
                 "--set", "data.options={}", "--set", "data.image_size=16",
                 "--set", f"data.workers={workers}", "--set", "model.name=resnet_small",
                 "--set", "model.options={widths: [4, 8, 8]}", "--set", "order_seeds=[0]",
                 "--set", "methods=[finetune]", "--set", "n_phases=2", "--set", "base.epochs=2",
                 "--set", "phase.epochs=1",
                 "--set", "base.batch_size=4", "--set", "phase.batch_size=4",
                 "--set", f"cache_dir={tmp_path / 'c'}"])
    assert code == 0, capsys.readouterr().err
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [p["n_train"] for p in runs[0]["phases"]] == [6, 6]


def test_tuning_scores_the_validation_slice_not_the_test_set(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import instil.engine.protocol as protocol

    asked = []
    original = protocol.Session.predict

    def spy(self, model, split, indices):
        asked.append(split)
        return original(self, model, split, indices)

    monkeypatch.setattr(protocol.Session, "predict", spy)
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "validation_fraction=0.2", "--set", "methods=[finetune]"]) == 0
    assert asked and set(asked) == {"train"}
    results = json.loads((out / "results.json").read_text())
    assert results["acc_test_on"] == "validation"
    assert json.loads((out / "manifest-0.json").read_text())["sizes"]["validation"] == 120


def test_compare_shows_what_differs_between_runs(tmp_path: Path, toy_args: list[str],
                                                 capsys: pytest.CaptureFixture) -> None:
    for lr in ("0.01", "0.02"):
        assert main(["run", "configs/toy2d.yaml", "--out", str(tmp_path / lr), "--no-progress",
                     *toy_args, "--set", "methods=[finetune]", "--set", f"phase.lr={lr}"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "0.01"), str(tmp_path / "0.02")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | phase.lr | method | seeds | acc_test")
    assert "| 0.01 | finetune | 2 |" in table[2] and "| 0.02 | finetune | 2 |" in table[3]
    # On the order seeds the runs share: one seed each, so no interval.
    assert main(["compare", str(tmp_path / "0.01"), str(tmp_path / "0.02"),
                 "--order-seeds", "1", "--methods", "finetune"]) == 0
    one_seed = capsys.readouterr().out.splitlines()
    assert "| 0.01 | finetune | 1 |" in one_seed[2] and " ± " not in one_seed[2]
    assert main(["compare", str(tmp_path / "0.01"), str(tmp_path / "0.02"),
                 "--per-phase", "pp"]) == 0
    lines = capsys.readouterr().out.split("### pp")[1].strip().splitlines()
    assert lines[0] == f"| phase | {tmp_path / '0.01'}: finetune | {tmp_path / '0.02'}: finetune |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["1", "2", "3"]
    assert main(["compare", str(tmp_path / "0.01"), "--per-phase", "acc_shift"]) == 2
    assert "--per-phase acc_shift: not a metric" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "0.01"), "--per-seed", "pp,f"]) == 0
    tables = capsys.readouterr().out
    lines = tables.split("### pp after the last phase, per order seed")[1].strip().splitlines()
    assert lines[0] == "| order seed | finetune |"
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["0", "1"]
    assert "### f after the last phase, per order seed" in tables
    assert main(["compare", str(tmp_path / "0.01"), "--per-seed", "acc_shift"]) == 2
    assert "--per-seed acc_shift: not a metric" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "0.01"), str(tmp_path / "0.02"),
                 "--paired-to", f"{tmp_path / '0.01'}: finetune"]) == 0
    assert f"| {tmp_path / '0.02'}: finetune | 2 | " in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "0.01"), "--paired-to", "dbd"]) == 2
    assert "--paired-to dbd: no such method" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "0.01"), "--methods", "dbd"]) == 2
    assert "no run of methods ['dbd']" in capsys.readouterr().err


def test_report_rewrites_the_summary_of_an_interrupted_run(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress",
                 *toy_args]) == 0
    summary = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    (out / "curves.png").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "summary.md").read_text() == summary and (out / "curves.png").is_file()
    # As an interrupted run leaves it: not complete, joint of seed 1 missing.
    results = json.loads((out / "results.json").read_text())
    results["complete"] = False
    results["runs"] = results["runs"][:3]
    (out / "results.json").write_text(json.dumps(results))
    assert main(["report", str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert "The run is not complete" in text and "| joint | yes | 4.8k | 3 | 1 |" in text
    assert main(["report", str(tmp_path)]) == 2
    assert "results.json: cannot read results" in capsys.readouterr().err


def test_compare_names_a_folder_without_results(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err


def test_an_existing_run_is_refused_without_resume(tmp_path: Path, toy_args: list[str],
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args]
    assert main(args + ["--set", "methods=[finetune]"]) == 0
    before = (out / "results.json").read_bytes()
    assert main(args + ["--set", "methods=[finetune]"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_resume_keeps_finished_pairs_and_runs_the_rest(tmp_path: Path, toy_args: list[str],
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args]
    assert main(args + ["--set", "methods=[finetune]"]) == 0
    first = json.loads((out / "results.json").read_text())["runs"]
    capsys.readouterr()
    assert main(args + ["--set", "methods=[finetune, joint]", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "finetune order seed 0: kept from results.json" in err
    assert "finetune order seed 0 phase 1" not in err and "joint order seed 1 phase 3" in err
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["method"], r["order_seed"]) for r in runs] == [
        ("finetune", 0), ("joint", 0), ("finetune", 1), ("joint", 1)]
    # The kept records are the very same, timings included.
    assert [r for r in runs if r["method"] == "finetune"] == first
    assert runs[1]["options"] == {"every_phase": False}


def test_an_interrupted_resume_keeps_every_kept_record(
        tmp_path: Path, toy_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import instil.engine.protocol as protocol

    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args]
    assert main(args + ["--set", "methods=[finetune]"]) == 0
    real_run, calls = protocol.run_method, []

    def run_then_stop(*a, **k):  # joint of seed 0 finishes; joint of seed 1 is cut
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(*a, **k)

    monkeypatch.setattr(protocol, "run_method", run_then_stop)
    assert main(args + ["--set", "methods=[joint, finetune]", "--resume"]) == 130
    runs = json.loads((out / "results.json").read_text())["runs"]
    # finetune of seed 1 was kept but not yet reached: it must still be there.
    assert [(r["method"], r["order_seed"]) for r in runs] == [
        ("joint", 0), ("finetune", 0), ("finetune", 1)]


def test_a_resume_that_drops_methods_or_seeds_is_refused(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args]
    assert main(args + ["--set", "methods=[finetune, joint]"]) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(args + ["--set", "methods=[finetune]", "--resume"]) == 2
    assert "leaves out: joint (order seed 0), joint (order seed 1)" in capsys.readouterr().err
    assert main(args + ["--set", "methods=[finetune, joint]", "--set", "order_seeds=[1]",
                        "--resume"]) == 2
    assert "finetune (order seed 0)" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_resume_refuses_another_protocol(tmp_path: Path, toy_args: list[str],
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
            "--set", "methods=[finetune]"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--set", "phase.lr=0.5", "--resume"]) == 2
    assert "phase.lr=" in capsys.readouterr().err


def test_resume_sets_up_a_method_not_yet_run_but_not_one_that_ran(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
            "--set", "order_seeds=[0]"]
    assert main(args + ["--set", "methods=[finetune]",
                        "--set", "method_options.lwf.lambda_kd=3"]) == 0
    # lwf has not run in this folder: its options may still change before it runs.
    with_lwf = args + ["--set", "methods=[finetune, lwf]",
                       "--set", "method_options.lwf.lambda_kd=2", "--resume"]
    assert main(with_lwf) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["lwf"]["options"]["lambda_kd"] == 2
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    # Once it ran, they may not; nor may the budget of a method that ran.
    assert main([*with_lwf, "--set", "method_options.lwf.lambda_kd=1"]) == 2
    assert "ran lwf with method_options.lwf={'lambda_kd': 2" in capsys.readouterr().err
    assert main([*with_lwf, "--set", "method_budgets.finetune.lr=0.5"]) == 2
    assert "ran finetune with method_budgets.finetune={}, this run has {'lr': 0.5}" in \
        capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_resume_refuses_kept_runs_of_another_m0(tmp_path: Path, toy_args: list[str],
                                               capsys: pytest.CaptureFixture) -> None:
    # A kept run whose M(0) scored otherwise (retrained since on another machine) must not
    # be paired with new runs from this one.
    out = tmp_path / "out"
    args = ["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args]
    assert main(args + ["--set", "methods=[finetune]", "--set", "order_seeds=[0]"]) == 0
    original = (out / "results.json").read_text()
    results = json.loads(original)
    results["runs"][0]["base"]["acc_test"] -= 0.5
    (out / "results.json").write_text(json.dumps(results))
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(args + ["--set", "methods=[finetune, joint]", "--set", "order_seeds=[0]",
                        "--resume"]) == 2
    err = capsys.readouterr().err
    assert "results.json: finetune on order seed 0 started from an M(0) scoring" in err
    assert "joint order seed 0 phase" not in err
    assert (out / "results.json").read_bytes() == before
    # The same M(0) (unchanged scores) resumes as before.
    (out / "results.json").write_text(original)
    assert main(args + ["--set", "methods=[finetune, joint]", "--set", "order_seeds=[0]",
                        "--resume"]) == 0


@pytest.mark.parametrize("stream", ["class_skew", "subpop_shift"])
def test_stream_presets_run_end_to_end(tmp_path: Path, stream: str,
                                       capsys: pytest.CaptureFixture) -> None:
    root = write_fmnist(tmp_path / "fm", n_train=200, n_test=100)
    out = tmp_path / "out"
    preset = {"class_skew": "configs/fmnist-skew.yaml",
              "subpop_shift": "configs/fmnist-shift.yaml"}
    code = main(["run", preset[stream], "--out", str(out), "--no-progress",
                 "--set", f"data.root={root}", "--set", f"cache_dir={tmp_path / 'c'}",
                 "--set", "device=cpu", "--set", "n_phases=2", "--set", "base.epochs=1",
                 "--set", "phase.epochs=1", "--set", "methods=[finetune]",
                 "--set", "order_seeds=[0]", "--set", "split.k=2",
                 "--set", "base_fraction=0.3"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest-0.json").read_text())
    assert manifest["stream"]["name"] == stream
    assert sum(map(sum, manifest["class_counts"])) == 200
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert ("acc_shift" in run["base"]) == (stream == "subpop_shift")
    assert all(("acc_shift" in p) == (stream == "subpop_shift") for p in run["phases"])
