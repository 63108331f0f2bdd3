"""Methods measured against a reference of their own: iCaRL's two classifiers (NME against
M(0)'s NME, the head against M(0)) and PODNet's own cached M(0) with its cosine classifier."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instil.cli import main
from instil.data.split import make_split
from instil.methods import create_method
from instil.methods.base import PhaseContext
from instil.methods.icarl import NearestMeanClassifier
from instil.methods.podnet import LocalSimilarityClassifier, nca_loss
from instil.models import create_model

from .phase_data import TensorData


def toy_data(n: int = 120, num_classes: int = 3) -> TensorData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % num_classes
    x = torch.randn(n, 2, generator=g) + 3 * F.one_hot(y, num_classes)[:, :2]
    return TensorData(x, y, num_classes)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", (2,), 3, hidden=(8,))


def context(data: TensorData, phase: int = 0) -> PhaseContext:
    return PhaseContext(phase, 2, lambda: None, make_split(len(data.x), 0, 0.5, 2, "toy"), data)


def test_icarl_is_measured_against_m0s_nearest_mean_over_the_d0_exemplars() -> None:
    data, m0 = toy_data(), mlp()
    icarl = create_method("icarl", {"per_class": 4})
    reference, name = icarl.reference_model(m0, context(data))
    assert isinstance(reference, NearestMeanClassifier) and "nearest-mean" in name
    assert reference.model is m0  # M(0)'s own features, not a copy that could drift
    # The same exemplars and means phase 1 starts from (herding is deterministic).
    icarl.begin_phase(m0, context(data, phase=1))
    for c, indices in icarl.memory.by_class.items():
        with torch.no_grad():
            f = F.normalize(m0.eval().features(data.x[indices]), dim=1)
        assert torch.allclose(reference.means[c], F.normalize(f.mean(0), dim=0), atol=1e-6)


def test_icarl_cnn_deploys_its_head_reports_the_nme_and_is_measured_against_m0() -> None:
    data, m0 = toy_data(), mlp()
    cnn = create_method("icarl-cnn", {"per_class": 4})
    assert cnn.reference_model(m0, context(data)) == (m0, "M(0)")
    cnn.begin_phase(m0, context(data, phase=1))
    cnn.end_phase()
    assert cnn.deployed() is cnn.model
    assert isinstance(cnn.also_evaluated()["nme"], NearestMeanClassifier)
    nme = create_method("icarl", {"per_class": 4})
    nme.begin_phase(m0, context(data, phase=1))
    nme.end_phase()
    assert isinstance(nme.deployed(), NearestMeanClassifier)
    assert nme.also_evaluated() == {"head": nme.model}


def test_podnet_lsc_trains_its_own_m0_with_an_lsc_head_and_keeps_it() -> None:
    data, fresh = toy_data(), mlp()
    podnet = create_method("podnet-lsc", {"per_class": 4})
    assert create_method("podnet").base_trainer() is None
    trainer = podnet.base_trainer()
    model = trainer.architecture(fresh, context(data))
    head = model.head
    assert isinstance(head, LocalSimilarityClassifier) and head.proxies.shape[0] == 3 * 10
    trainer.begin_phase(model, context(data))
    x, y = data.x[:16], data.y[:16]
    expected = nca_loss(head.similarities(model.features(x)), head.eta, y, 0.6)
    assert torch.equal(trainer.loss(x, y), expected)
    # Phase 1 starts from that M(0) and keeps its trained proxies (no imprinting).
    podnet.begin_phase(trainer.deployed(), context(data, phase=1))
    assert torch.equal(podnet.student.head.proxies, head.proxies)


def nme_of_m0_accuracy(out: Path, per_class: int) -> float:
    """Test accuracy of the nearest-mean classifier over M(0)'s features of the exemplars
    that herding picks from D(0) (the run's saved M(0), data and manifest)."""
    from instil.checkpoint import build_model, load_checkpoint
    from instil.config import load_config
    from instil.data import load_dataset
    from instil.data.loaders import BatchPlan, DataSource
    from instil.engine.protocol import SourceData

    config = load_config(out / "config.yaml")
    bundle = load_dataset(config.data)
    source = DataSource(bundle, config.data, torch.device("cpu"), False)
    m0 = build_model(load_checkpoint(out / "models" / "m0-0.pt"), "m0").eval()
    base = np.array(json.loads((out / "manifest-0.json").read_text())["base"])
    split = dataclasses.replace(make_split(len(bundle.train), 0, 0.5, 2, "toy"), base=base)
    ctx = PhaseContext(0, config.n_phases, lambda: None, split,
                       SourceData(source, 64, 256, 0))
    assert np.array_equal(ctx.split.part(0), base)
    icarl = create_method("icarl", {"per_class": per_class})
    reference, _ = icarl.reference_model(m0, ctx)
    correct = total = 0
    with torch.no_grad():
        for x, y in source.batches("test", None, BatchPlan(256, train=False)).epoch(0):
            correct += int((reference(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def cache_entries(cache: Path) -> list[Path]:
    return sorted((cache / "base").glob("*.pt"))


def test_the_protocol_records_each_methods_reference_and_caches_podnets_m0(
        tmp_path: Path, toy_args: list[str], capsys: pytest.CaptureFixture) -> None:
    methods = ["finetune", "icarl", "icarl-cnn", "podnet-lsc"]
    # Overlapping blobs without drift: M(0)'s nearest-mean classifier and its linear head
    # then score differently, so a reference taken from the wrong model shows.
    common = [*toy_args, "--no-progress", "--set", "n_phases=2", "--set", "order_seeds=[0]",
              "--set", "data.options={n_train: 600, n_test: 300, spread: 1.2, "
                       "drift_fraction: 0.0}",
              "--set", f"methods={methods}", "--set", "method_options.icarl={per_class: 5}",
              "--set", "method_options.podnet={per_class: 5}"]
    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), *common]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"]}
    shared = runs["finetune"]["base"]
    assert all(r["base"] == shared for r in runs.values())  # what the reports print as M(0)
    assert "reference" not in runs["finetune"] and "reference" not in runs["icarl-cnn"]
    for name in ("icarl", "podnet-lsc"):
        ref = runs[name]["reference"]
        for p in runs[name]["phases"]:
            assert p["pp"] == pytest.approx(p["acc_test"] - ref["acc_test"])
            assert p["f"] == pytest.approx(ref["acc_base"] - p["acc_base"])
    assert "nearest-mean" in runs["icarl"]["reference"]["name"]
    # iCaRL's reference scores are those of M(0)'s NME, rebuilt here from the saved M(0).
    nme_accuracy = nme_of_m0_accuracy(out, per_class=5)
    assert nme_accuracy != pytest.approx(shared["acc_test"], abs=1e-4)
    assert runs["icarl"]["reference"]["acc_test"] == pytest.approx(nme_accuracy, abs=1e-4)
    assert "own M(0)" in runs["podnet-lsc"]["reference"]["name"]
    assert "nme_acc_test" in runs["icarl-cnn"]["phases"][0]
    assert "measured against" in (out / "summary.md").read_text()
    cache = tmp_path / "cache"
    assert len(cache_entries(cache)) == 2  # the shared M(0) and podnet-lsc's own
    # A second run finds podnet-lsc's M(0) in the cache and repeats its numbers exactly.
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["run", "configs/toy2d.yaml", "--out", str(again), *common,
                 "--set", "methods=[podnet-lsc]"]) == 0
    assert "(base-podnet-lsc) from the cache" in capsys.readouterr().err
    assert len(cache_entries(cache)) == 2
    rerun = json.loads((again / "results.json").read_text())["runs"][0]
    assert rerun["reference"] == runs["podnet-lsc"]["reference"]
    assert [p["acc_test"] for p in rerun["phases"]] == \
        [p["acc_test"] for p in runs["podnet-lsc"]["phases"]]
    assert np.isfinite([p["eta"] for p in rerun["phases"]]).all()
