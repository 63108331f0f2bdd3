"""`instil bench speed` end to end on small synthetic images (correctness, not speed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instil.cli import main

SYNTHETIC = ["--set", "data.name=synthetic", "--set",
             "data.options={channels: 1, size: 12, num_classes: 4, n_train: 300, n_test: 50}",
             "--set", "model.options={widths: [4, 4, 4]}", "--set", "device=cpu",
             "--set", "eval_batch_size=16"]


def test_bench_speed_writes_consistent_figures(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "speed.json"
    code = main(["bench", "speed", "--preset", "configs/fmnist-quick.yaml", "--steps", "3",
                 "--repeats", "2", "--batch", "16", "--json", str(out), *SYNTHETIC])
    assert code == 0, capsys.readouterr().err
    assert "dbd epoch" in capsys.readouterr().out
    r = json.loads(out.read_text())["figures"]
    for key in ("ceiling_images_per_s", "base_images_per_s", "finetune_images_per_s",
                "dbd_images_per_s", "eval_images_per_s", "peak_memory_mb"):
        assert r[key] > 0, key
    assert r["batch"] == 16 and r["steps"] == 3 and r["repeats"] == 2
    assert r["data_path_overhead"] == pytest.approx(
        1 - r["finetune_images_per_s"] / r["ceiling_images_per_s"])
    assert r["dbd_vs_finetune_epoch_time"] == pytest.approx(
        r["finetune_images_per_s"] / r["dbd_images_per_s"])


def test_bench_refuses_more_steps_than_images(capsys: pytest.CaptureFixture) -> None:
    code = main(["bench", "speed", "--preset", "configs/fmnist-quick.yaml", "--steps", "500",
                 "--batch", "16", *SYNTHETIC])
    assert code == 2 and "lower --steps" in capsys.readouterr().err


def test_bf16_runs_and_fp16_needs_cuda(tmp_path: Path, toy_args: list[str],
                                       capsys: pytest.CaptureFixture) -> None:
    args = ["run", "configs/toy2d.yaml", "--no-progress", *toy_args, "--set", "device=cpu",
            "--set", "methods=[finetune, dbd]", "--set", "phase.epochs=3",
            "--set", "method_options.dbd.freeze_epochs=1"]
    assert main(args + ["--out", str(tmp_path / "bf16"), "--set", "precision=bf16"]) == 0
    results = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert results["config"]["precision"] == "bf16" and len(results["runs"]) == 4
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "fp16"), "--set", "precision=fp16"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_bench_telemetry_pairs_epochs_and_reports_their_median_ratio(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "telemetry.json"
    code = main(["bench", "telemetry", "--preset", "configs/fmnist-quick.yaml", "--steps", "2",
                 "--rounds", "3", "--methods", "finetune,dbd", "--json", str(out), *SYNTHETIC,
                 "--set", "phase.batch_size=16"])
    assert code == 0, capsys.readouterr().err
    assert "overhead (median)" in capsys.readouterr().out
    figures = json.loads(out.read_text())["figures"]
    assert [m["method"] for m in figures["methods"]] == ["finetune", "dbd"]
    for m in figures["methods"]:
        on, off = np.array(m["seconds_on"]), np.array(m["seconds_off"])
        assert len(on) == len(off) == m["rounds"] == 3 and m["steps"] == 2
        assert m["overhead"] == pytest.approx(float(np.median(on / off - 1)))
        assert m["overhead_low"] <= m["overhead"] <= m["overhead_high"]


def test_bench_telemetry_off_arm_notes_nothing_and_trains_the_same() -> None:
    from instil.bench_telemetry import silenced
    from instil.config import load_config
    from instil.engine.protocol import method_for
    from instil.methods.base import PhaseContext
    from instil.models import create_model

    config = load_config(Path("configs/fmnist-quick.yaml"), [])
    torch.manual_seed(0)
    start = create_model("resnet_small", (1, 12, 12), 4, widths=(4, 4, 4))
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 4, (8,))
    losses, noted = {}, {}
    for arm, method in (("on", method_for(config, "dbd")),
                        ("off", silenced(method_for(config, "dbd")))):
        method.begin_phase(start, PhaseContext(1, 1, lambda: start))
        torch.manual_seed(1)  # the same dusting noise in both arms
        losses[arm] = method.loss(x, y).item()
        noted[arm] = set(method.terms())
    assert noted["on"] == set(method_for(config, "dbd").term_names()) and noted["off"] == set()
    assert losses["on"] == losses["off"]
