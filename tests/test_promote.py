"""`instil promote` and `instil images` on tiny generated data: a passing and a failing gate,
the checkpoint left untouched, and one-line answers to bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instil.checkpoint import build_model, load_checkpoint, of_model, save_checkpoint
from instil.cli import main
from instil.data.fmnist import CLASSES, MEAN, STD, load_fmnist
from instil.models import create_model
from instil.promotion.folders import read_images
from instil.promotion.gate import compare, gate
from instil.promotion.labelled import Labelled, split_holdout
from tests.conftest import write_fmnist

# DBD consolidates only after freeze_epochs, which must stay below --epochs.
QUICK = ["--device", "cpu", "--no-progress", "--epochs", "2", "--batch-size", "32",
         "--set", "method_options.dbd.freeze_epochs=1"]
LENIENT = ["--min-gain", "-100", "--max-nfr", "100"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_of(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Fashion-MNIST look-alike, the M(0) checkpoint `instil run` writes for it, and
    class folders written by `instil images`: new data from train, a holdout from test."""
    root = tmp_path_factory.mktemp("promote")
    fm = write_fmnist(root / "fm", n_train=200, n_test=100)
    out = root / "run"
    assert main(["run", "configs/fmnist-quick.yaml", "--out", str(out), "--no-progress",
                 "--set", f"data.root={fm}", "--set", f"cache_dir={root / 'cache'}",
                 "--set", "device=cpu", "--set", "methods=[finetune]", "--set", "n_phases=1",
                 "--set", "base.epochs=2", "--set", "phase.epochs=1",
                 "--set", "base.batch_size=32", "--set", "phase.batch_size=32"]) == 0
    for name, split, count in (("new", "train", 80), ("holdout", "test", 60)):
        assert main(["images", "fmnist", "--root", str(fm), "--out", str(root / name),
                     "--split", split, "--count", str(count), "--seed", "1"]) == 0
    return {"fm": fm, "ckpt": out / "models" / "m0-0.pt", "new": root / "new",
            "holdout": root / "holdout"}


@pytest.fixture
def small_ckpt(tmp_path: Path) -> Path:
    """An untrained Fashion-MNIST-shaped checkpoint, for answers that come before training."""
    torch.manual_seed(0)
    model = create_model("resnet_small", (1, 28, 28), 10, widths=(4, 4, 4))
    path = tmp_path / "small.pt"
    save_checkpoint(path, of_model(model, "resnet_small", {"widths": [4, 4, 4]}, (1, 28, 28),
                                   list(CLASSES), MEAN, STD))
    return path


def write_images(root: Path, counts: dict[str, int], size: int = 28,
                 mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            array = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i}.png")
    return root


def test_images_writes_png_class_folders(fmnist_run: dict[str, Path],
                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folders = sorted(p.name for p in fmnist_run["holdout"].iterdir())
    # Class names as the fmnist loader names them, '/' written as '_' (T-shirt/top).
    assert "T-shirt_top" in folders and set(folders) <= {c.replace("/", "_") for c in CLASSES}
    files = sorted(fmnist_run["holdout"].rglob("*.png"))
    assert len(files) == 60 and all(f.name.startswith("test-") for f in files)
    # Each file holds its source image exactly, in the folder of its label.
    test = load_fmnist(fmnist_run["fm"]).test
    for f in files[:5]:
        index = int(f.stem.split("-")[1])
        pixels = np.asarray(Image.open(f))
        assert pixels.shape == (28, 28)
        assert np.array_equal(pixels, test.tensor[index, 0].numpy())
        assert f.parent.name == CLASSES[int(test.labels[index])].replace("/", "_")
    line = error_of(["images", "fmnist", "--root", str(fmnist_run["fm"]), "--out",
                     str(fmnist_run["holdout"]), "--split", "test", "--count", "5"], capsys)
    assert "not an empty folder" in line


def test_a_passing_promotion_writes_a_loadable_checkpoint(
        fmnist_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt_path, out = fmnist_run["ckpt"], tmp_path / "promoted.pt"
    original = load_checkpoint(ckpt_path)
    code, printed, err = run_cli(["promote", "--model", str(ckpt_path), "--new-data",
                                  str(fmnist_run["new"]), "--holdout", str(fmnist_run["holdout"]),
                                  "--out", str(out), *QUICK, *LENIENT], capsys)
    assert code == 0, err
    assert "| class | holdout images | acc before | acc after | change |" in printed
    promoted = load_checkpoint(out)
    build_model(promoted, out)
    assert (promoted.model, promoted.classes, promoted.mean, promoted.std) == \
        (original.model, original.classes, original.mean, original.std)
    assert promoted.config == original.config
    assert len(promoted.history) == len(original.history) + 1
    entry = promoted.history[-1]
    assert entry["kind"] == "promote" and entry["method"] == "dbd"
    assert entry["options"]["freeze_epochs"] == 1 and entry["train"]["epochs"] == 2
    report = json.loads((tmp_path / "promoted.report.json").read_text())
    assert report["gate"]["passed"] and report["new_data"]["images"] == 80
    assert report["holdout"]["images"] == 60 and len(report["per_class"]) == 10
    assert report["gain"] == pytest.approx(report["acc_after"] - report["acc_before"])
    assert entry["gain"] == report["gain"]
    assert sum(row["images"] for row in report["per_class"]) == 60
    # The checkpoint's config says crop padding 2 (fmnist-quick): carried into the phase.
    assert report["train"]["crop_padding"] == 2
    assert "Gate: passed" in (tmp_path / "promoted.report.md").read_text()
    # The training's per-epoch record beside the reports, as a run folder's epochs.jsonl:
    # dbd's loss terms, every epoch once.
    epochs = [json.loads(line) for line in
              (tmp_path / "promoted.epochs.jsonl").read_text().splitlines()]
    assert [(r["method"], r["phase"], r["epoch"]) for r in epochs] == [("dbd", 1, 1),
                                                                       ("dbd", 1, 2)]
    assert {"loss", "l_fl", "l_dis", "outer_fraction", "ema_steps"} <= set(epochs[-1])
    assert epochs == report["epochs"]
    assert "### Training per epoch" in (tmp_path / "promoted.report.md").read_text()
    # A second promotion into the same file needs --overwrite.
    line = error_of(["promote", "--model", str(ckpt_path), "--new-data",
                     str(fmnist_run["new"]), "--out", str(out), *QUICK], capsys)
    assert "--overwrite" in line


def test_a_failing_gate_exits_3_and_leaves_the_checkpoint_alone(
        fmnist_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt_path, out = fmnist_run["ckpt"], tmp_path / "promoted.pt"
    before = ckpt_path.read_bytes()
    code, _, err = run_cli(["promote", "--model", str(ckpt_path), "--new-data",
                            str(fmnist_run["new"]), "--out", str(out), "--min-gain", "100",
                            "--report", str(tmp_path / "reports"), *QUICK], capsys)
    assert code == 3
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert "min_gain (--min-gain) 100.00" in err and "not written" in err
    assert not out.exists() and ckpt_path.read_bytes() == before
    report = json.loads((tmp_path / "reports" / "promoted.report.json").read_text())
    assert not report["gate"]["passed"]
    assert (tmp_path / "reports" / "promoted.report.md").is_file()
    assert (tmp_path / "reports" / "promoted.epochs.jsonl").is_file()
    # Without --holdout a seeded 20% of every class of --new-data is scored, never trained on.
    assert "20% of" in report["holdout"]["source"]
    assert report["new_data"]["images"] + report["holdout"]["images"] == 80
    assert 14 <= report["holdout"]["images"] <= 18


def test_unknown_class_folder_lists_unknown_and_missing(
        small_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = write_images(tmp_path / "new", {"Trouser": 2, "Giraffe": 2, "Bag": 2})
    line = error_of(["promote", "--model", str(small_ckpt), "--new-data", str(new),
                     "--out", str(tmp_path / "p.pt"), "--device", "cpu"], capsys)
    assert "not classes of the model: Giraffe;" in line
    assert "missing" in line and "T-shirt/top" in line and "Coat" in line
    assert "Trouser," not in line.split("missing")[1]


def test_corrupt_image_is_named(small_ckpt: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    new = write_images(tmp_path / "new", {"Trouser": 3, "Bag": 3})
    (new / "Bag" / "broken.png").write_bytes(b"not an image at all")
    line = error_of(["promote", "--model", str(small_ckpt), "--new-data", str(new),
                     "--out", str(tmp_path / "p.pt"), "--device", "cpu"], capsys)
    assert "broken.png" in line and "unreadable image" in line


def test_out_equal_to_model_is_refused(small_ckpt: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    new = write_images(tmp_path / "new", {"Trouser": 3, "Bag": 3})
    before = small_ckpt.read_bytes()
    same = small_ckpt.parent / "." / small_ckpt.name
    for out in (small_ckpt, same):
        line = error_of(["promote", "--model", str(small_ckpt), "--new-data", str(new),
                         "--out", str(out), "--overwrite"], capsys)
        assert "is the input checkpoint" in line
    assert small_ckpt.read_bytes() == before


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_a_pickle_carrying_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "instil-checkpoint", "x": Payload()}, protocol=2))
    new = write_images(tmp_path / "new", {"a": 2, "b": 2})
    line = error_of(["promote", "--model", str(evil), "--new-data", str(new),
                     "--out", str(tmp_path / "p.pt")], capsys)
    assert "refused" in line and "pickled" in line


def test_methods_that_need_old_data_or_more_epochs_are_refused(
        small_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = write_images(tmp_path / "new", {"Trouser": 3, "Bag": 3})
    args = ["promote", "--model", str(small_ckpt), "--new-data", str(new),
            "--out", str(tmp_path / "p.pt"), "--device", "cpu"]
    assert "old data" in error_of([*args, "--method", "er"], capsys)
    line = error_of([*args, "--epochs", "3"], capsys)
    assert "--epochs=3 is below freeze_epochs=10" in line


def write_torchvision(tmp_path: Path) -> tuple[Path, Path]:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "tv.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=2).state_dict(), path)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    return path, names


def test_torchvision_state_dict_of_another_architecture_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, names = write_torchvision(tmp_path)
    new = write_images(tmp_path / "new", {"cat": 2, "dog": 2}, size=32, mode="RGB")
    line = error_of(["promote", "--model", str(path), "--arch", "resnet34", "--classes",
                     str(names), "--new-data", str(new), "--out", str(tmp_path / "p.pt")],
                    capsys)
    assert "not those of a resnet34" in line


def test_torchvision_state_dict_end_to_end(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    path, names = write_torchvision(tmp_path)
    new = write_images(tmp_path / "new", {"cat": 6, "dog": 6}, size=32, mode="RGB")
    out = tmp_path / "promoted.pt"
    code, _, err = run_cli(["promote", "--model", str(path), "--arch", "resnet18",
                            "--classes", str(names), "--image-size", "32", "--new-data",
                            str(new), "--out", str(out), "--device", "cpu", "--no-progress",
                            "--epochs", "1", "--batch-size", "8",
                            "--set", "method_options.dbd.freeze_epochs=0", *LENIENT], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(out)
    assert ckpt.model == "resnet18" and ckpt.classes == ["cat", "dog"]
    assert ckpt.input_shape == (3, 32, 32) and len(ckpt.history) == 1
    assert ckpt.history[0]["train"]["crop_padding"] == 4  # the RGB default: no config
    build_model(ckpt, out)


def test_images_are_read_in_the_models_mode_and_size(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (60, 30), (255, 0, 0)).save(path)
    gray = read_images([path], (1, 28, 28))
    assert gray.shape == (1, 1, 28, 28) and gray.dtype == torch.uint8
    assert int(gray[0, 0, 14, 14]) == 76  # PIL's luma of pure red: 0.299 * 255
    rgb = read_images([path], (3, 16, 16))
    assert rgb.shape == (1, 3, 16, 16) and rgb[0, :, 8, 8].tolist() == [255, 0, 0]


def test_compare_and_gate_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])
    holdout = Labelled(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), labels,
                       [f"{i}.png" for i in range(5)], "holdout")
    before = torch.tensor([0, 1, 1, 1, 0])  # right: 0, 2, 3
    after = torch.tensor([0, 0, 0, 1, 1])  # right: 0, 1, 3, 4
    scores = compare(before, after, holdout, ["a", "b", "c"])
    assert scores["acc_before"] == pytest.approx(60) and scores["acc_after"] == pytest.approx(80)
    assert scores["gain"] == pytest.approx(20)
    assert scores["negative_flips"]["count"] == 1 and scores["negative_flips"]["nfr"] == 20
    assert scores["negative_flips"]["files"] == [{"path": "2.png", "class": "b",
                                                  "before": "b", "after": "a"}]
    assert scores["positive_flips"]["count"] == 2
    rows = {row["class"]: row for row in scores["per_class"]}
    assert (rows["a"]["images"], rows["a"]["before"], rows["a"]["after"]) == (2, 50, 100)
    assert rows["b"]["change"] == pytest.approx(100 * 2 / 3 - 100 * 2 / 3)
    assert rows["c"] == {"class": "c", "images": 0, "before": None, "after": None,
                         "change": None}
    assert gate(20, 20, 0, 2) == (
        False, "negative-flip rate 20.00% exceeds max_nfr (--max-nfr) 2.00%")
    assert gate(0, 2, 0, 2)[0] and not gate(-0.1, 0, 0, 2)[0]
    # Both limits missed: both named, in one line.
    assert gate(-1, 3, 0.5, 2) == (
        False, "gain -1.00 points is below min_gain (--min-gain) 0.50 and "
               "negative-flip rate 3.00% exceeds max_nfr (--max-nfr) 2.00%")
    assert gate(1, 0.5, 0.5, 2) == (
        True, "gain +1.00 >= min_gain (--min-gain) 0.50 and negative-flip "
              "rate 0.50% <= max_nfr (--max-nfr) 2.00%")


def test_split_holdout_keeps_every_class_on_both_sides() -> None:
    labels = torch.tensor([0] * 10 + [1] * 2 + [2])
    train, held = split_holdout(labels, 0.2, seed=3)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(13))
    assert sorted(labels[held].tolist()) == [0, 0, 1]  # 20% of 10, one of 2, none of 1
    assert np.array_equal(held, split_holdout(labels, 0.2, seed=3)[1])


@pytest.mark.parametrize("method", ["finetune", "lwf", "ewc", "finetune-es"])
def test_every_method_without_old_data_promotes(fmnist_run: dict[str, Path], tmp_path: Path,
                                                method: str,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "promoted.pt"
    code, _, err = run_cli(["promote", "--model", str(fmnist_run["ckpt"]), "--new-data",
                            str(fmnist_run["new"]), "--method", method, "--out", str(out),
                            *QUICK, *LENIENT], capsys)
    assert code == 0, err
    assert load_checkpoint(out).history[-1]["method"] == method
