"""`instil promote` end to end, by behaviour: the checkpoint written is the model scored
"after"; the report's numbers are what the input and the written model predict here on the
holdout images; the gate reads exactly the gain and the negative-flip rate (each threshold
decides a case alone, at its boundary); the input file is never touched.

A promotion that helps: M(0) of a tiny Fashion-MNIST look-alike learns new, correctly
labelled images (dbd, the default method). One that hurts by construction: fine-tuning on
the same images filed under the next class's folder, which turns holdout images M(0) got
right wrong (negative flips) far more often than the other way round.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import instil.engine.protocol as protocol
from instil.checkpoint import build_model, load_checkpoint
from instil.cli import main
from instil.data.fmnist import CLASSES
from tests.conftest import write_fmnist

QUICK = ["--device", "cpu", "--no-progress", "--batch-size", "32"]
HELPS = [*QUICK, "--epochs", "3", "--lr", "0.05", "--set", "method_options.dbd.freeze_epochs=1"]
HURTS = [*QUICK, "--method", "finetune", "--epochs", "1", "--lr", "0.02"]
LENIENT = ["--min-gain=-100", "--max-nfr=100"]


def folder(name: str) -> str:
    return name.replace("/", "_")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """M(0)'s checkpoint as `instil run` writes it, new images and a holdout as `instil
    images` writes them, and the new images misfiled one class on."""
    root = tmp_path_factory.mktemp("gate")
    fm = write_fmnist(root / "fm", n_train=200, n_test=100)
    out = root / "run"
    assert main(["run", "configs/fmnist-quick.yaml", "--out", str(out), "--no-progress",
                 "--set", f"data.root={fm}", "--set", f"cache_dir={root / 'cache'}",
                 "--set", "device=cpu", "--set", "methods=[finetune]", "--set", "n_phases=1",
                 "--set", "base.epochs=10", "--set", "phase.epochs=1",
                 # Bars two rows apart: a crop's shift would move a class onto the next.
                 "--set", "data.crop_padding=0",
                 "--set", "base.batch_size=32", "--set", "phase.batch_size=32"]) == 0
    for name, split, count in (("new", "train", 80), ("holdout", "test", 60)):
        assert main(["images", "fmnist", "--root", str(fm), "--out", str(root / name),
                     "--split", split, "--count", str(count), "--seed", "1"]) == 0
    misfiled = root / "misfiled"
    for k, name in enumerate(CLASSES):
        source = root / "new" / folder(name)
        if source.is_dir():
            shutil.copytree(source, misfiled / folder(CLASSES[(k + 1) % len(CLASSES)]))
    return {"ckpt": out / "models" / "m0-0.pt", "new": root / "new",
            "holdout": root / "holdout", "misfiled": misfiled}


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def holdout_predictions(ckpt_path: Path, holdout: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What the checkpoint predicts for every holdout PNG, read and normalised here (the
    images are the model's size and mode), and the labels, by folder name."""
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, ckpt_path).eval()
    files = sorted(holdout.rglob("*.png"))
    index = {folder(c): k for k, c in enumerate(ckpt.classes)}
    labels = torch.tensor([index[f.parent.name] for f in files])
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in files]))
    x = pixels.unsqueeze(1).float().div(255)
    x = (x - torch.tensor(ckpt.mean).view(1, -1, 1, 1)) / torch.tensor(ckpt.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return model(x).argmax(1), labels


def percent(hits: torch.Tensor) -> float:
    return 100.0 * hits.sum().item() / len(hits)


def promote(data: dict[str, Path], out: Path, new: str, *flags: str,
            capsys: pytest.CaptureFixture) -> tuple[int, str, dict]:
    code = main(["promote", "--model", str(data["ckpt"]), "--new-data", str(data[new]),
                 "--holdout", str(data["holdout"]), "--out", str(out), *flags])
    err = capsys.readouterr().err
    report = json.loads(out.with_suffix(".report.json").read_text())
    return code, err, report


def spy_on_scoring(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The weights of every model the promotion scores, in order: before, then after."""
    scored: list[dict[str, torch.Tensor]] = []
    real = protocol.Session.predict

    def spy(self, model, split, indices):
        scored.append(weights(model))
        return real(self, model, split, indices)

    monkeypatch.setattr(protocol.Session, "predict", spy)
    return scored


def test_the_written_checkpoint_is_the_model_scored_after(
        data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    ckpt_bytes = data["ckpt"].read_bytes()
    scored = spy_on_scoring(monkeypatch)
    out = tmp_path / "promoted.pt"
    code, err, report = promote(data, out, "new", *HELPS, *LENIENT, capsys=capsys)
    assert code == 0, err
    assert data["ckpt"].read_bytes() == ckpt_bytes  # the input, untouched by a pass
    written = weights(build_model(load_checkpoint(out), out))
    before = weights(build_model(load_checkpoint(data["ckpt"]), data["ckpt"]))
    assert len(scored) == 2 and same_weights(scored[0], before)
    assert same_weights(scored[1], written)  # the model scored "after" is the one written
    assert not same_weights(written, before)  # and it was trained
    # The report's numbers, from predictions made here by the input and the written file.
    old, labels = holdout_predictions(data["ckpt"], data["holdout"])
    new, _ = holdout_predictions(out, data["holdout"])
    assert not torch.equal(old, new)  # else "after" scored on the input would pass unseen
    assert report["gain"] > 0  # the promotion helps
    right_before, right_after = old == labels, new == labels
    assert report["acc_before"] == pytest.approx(percent(right_before))
    assert report["acc_after"] == pytest.approx(percent(right_after))
    assert report["gain"] == pytest.approx(percent(right_after) - percent(right_before))
    assert report["negative_flips"]["count"] == int((right_before & ~right_after).sum())
    assert report["positive_flips"]["count"] == int((~right_before & right_after).sum())
    assert report["negative_flips"]["nfr"] == pytest.approx(percent(right_before & ~right_after))


@pytest.fixture(scope="module")
def harmful(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The report of the harmful promotion under a lenient gate, and its checks: a negative
    gain, and more negative flips than positive ones (else the gate cases below could not
    tell the negative-flip rate from the positive one)."""
    out = tmp_path_factory.mktemp("harmful") / "lenient.pt"
    assert main(["promote", "--model", str(data["ckpt"]), "--new-data", str(data["misfiled"]),
                 "--holdout", str(data["holdout"]), "--out", str(out), *HURTS,
                 *LENIENT]) == 0
    report = json.loads(out.with_suffix(".report.json").read_text())
    old, labels = holdout_predictions(data["ckpt"], data["holdout"])
    new, _ = holdout_predictions(out, data["holdout"])
    right_before, right_after = old == labels, new == labels
    assert report["negative_flips"]["nfr"] == pytest.approx(percent(right_before & ~right_after))
    assert report["positive_flips"]["rate"] == pytest.approx(percent(~right_before & right_after))
    assert report["gain"] < 0
    assert report["positive_flips"]["rate"] + 5 < report["negative_flips"]["nfr"]
    return report


def test_a_case_failing_only_on_max_nfr_exits_3_and_writes_no_checkpoint(
        data: dict[str, Path], harmful: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    nfr = harmful["negative_flips"]["nfr"]
    ckpt_bytes = data["ckpt"].read_bytes()
    out = tmp_path / "strict.pt"
    # Just below the negative-flip rate, far above the positive one; any gain allowed.
    code, err, report = promote(data, out, "misfiled", *HURTS, "--min-gain=-100",
                                f"--max-nfr={nfr - 0.01}", capsys=capsys)
    assert code == 3 and not out.exists()
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert "--max-nfr" in err and "--min-gain" not in err and "not written" in err
    assert not report["gate"]["passed"] and report["negative_flips"]["nfr"] == nfr
    assert data["ckpt"].read_bytes() == ckpt_bytes


def test_a_case_passing_only_because_of_the_gain_threshold(
        data: dict[str, Path], harmful: dict, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    gain, nfr = harmful["gain"], harmful["negative_flips"]["nfr"]
    # The gain is negative: the default --min-gain 0 would refuse it; --min-gain at exactly
    # the gain and --max-nfr at exactly the rate pass (both bounds are inclusive) ...
    out = tmp_path / "at-bounds.pt"
    code, err, report = promote(data, out, "misfiled", *HURTS, f"--min-gain={gain}",
                                f"--max-nfr={nfr}", capsys=capsys)
    assert code == 0, err
    assert out.exists() and report["gate"]["passed"] and report["gain"] == gain
    # ... and a hundredth of a point more of --min-gain fails, on the gain alone.
    out = tmp_path / "above.pt"
    code, err, report = promote(data, out, "misfiled", *HURTS, f"--min-gain={gain + 0.01}",
                                f"--max-nfr={nfr}", capsys=capsys)
    assert code == 3 and not out.exists() and not report["gate"]["passed"]
    assert "--min-gain" in err and "--max-nfr" not in err
