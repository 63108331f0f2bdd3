"""`instil.promote` from Python: any classifier, any form of data, the input model untouched,
the same promotion as the command line's, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer

import instil
from instil.checkpoint import build_model, load_checkpoint, of_model, save_checkpoint
from instil.cli import main
from instil.methods.dbd import DBD, DBDOptions, batch_statistics
from instil.models import create_model
from tests.conftest import weights_hash

CLASSES = 3
SIZE = 32
# DBD consolidates after freeze_epochs; 1 of 2 epochs keeps the tests short.
QUICK = dict(epochs=2, batch_size=8, options={"freeze_epochs": 1}, device="cpu",
             min_gain=-100.0, max_nfr=100.0)


def images(n: int, seed: int, channels: int = 3, size: int = SIZE
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images of CLASSES classes: class k is a bright band at rows 4k..4k+3,
    plus noise, learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    x = torch.rand(n, channels, size, size, generator=g) * 0.3
    for i, k in enumerate(labels.tolist()):
        x[i, :, 4 * k:4 * k + 4, :] += 0.7
    return (x - 0.5) / 0.25, labels


class UserNet(nn.Module):
    """A module written by a user: no instil base class, no `features` or `head`."""

    def __init__(self, channels: int = 3, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.out = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        return self.out(y.mean(dim=(2, 3)))


def small_vit() -> nn.Module:
    return VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=CLASSES)


def small_convnext() -> nn.Module:
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                    num_classes=CLASSES)


FAMILIES = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=CLASSES),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=CLASSES),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=CLASSES),
    "convnext": small_convnext,
    "vit": small_vit,
    "user": UserNet,
}


def built(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family]()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (model.eval()(x).argmax(1) == y).sum().item() / len(y)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_any_classifier_is_promoted_and_the_input_left_untouched(family: str) -> None:
    model = built(family)
    before, mode = weights_hash(model), model.training
    new, holdout = images(24, seed=1), images(12, seed=2)
    promotion = instil.promote(model, new, holdout=holdout, **QUICK)
    assert weights_hash(model) == before and model.training == mode
    promoted = promotion.model
    assert promoted is not model and type(promoted) is type(model)
    assert weights_hash(promoted) != before  # it learnt
    assert not promoted.training  # deployed
    assert all(p.requires_grad for p in promoted.parameters())  # as the input's were
    # The returned model is the one the report scored "after"; the input the one "before".
    report = promotion.report
    assert report["acc_after"] == pytest.approx(accuracy(promoted, *holdout))
    assert report["acc_before"] == pytest.approx(accuracy(model, *holdout))
    assert report["method"] == "dbd" and report["new_data"]["images"] == 24
    assert promotion.passed and promotion.reason == report["gate"]["reason"]
    assert promotion.markdown.startswith(f"## Promotion of {type(model).__name__} with dbd")


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_dbd_batch_statistics_are_a_no_op_without_batchnorm(family: str) -> None:
    """LayerNorm models: DBD's handling of BatchNorm statistics on dusted batches changes
    nothing, so the dusted logits are the teacher's eval and the student's train outputs."""
    model = built(family).eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
        with batch_statistics(model):
            inside = model(x)
    assert torch.equal(plain, inside) and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    method = DBD(DBDOptions(lean=False))
    method.begin_phase(model, None)
    method.student.train()
    teacher, student = method.dusted_logits(x)
    with torch.no_grad():
        assert torch.equal(teacher, model.eval()(x))
        assert torch.allclose(student, method.student(x))
    # The lean path's BatchNorm split is a no-op too: the same four logits.
    lean = DBD(DBDOptions(lean=True))
    lean.begin_phase(model, None)
    lean.student.train()
    torch.manual_seed(0)
    separate = method.separate_logits(x, x + 1)
    joint = lean.joint_logits(x, x + 1)
    for a, b in zip(separate, joint):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("method", ["finetune", "finetune-es", "lwf", "ewc", "dbd", "dbd-nofl",
                                    "dbd-nodis", "dbd-nokc", "dbd-dis-only"])
def test_every_method_without_old_data_promotes_a_user_module(method: str) -> None:
    model = built("user")
    before = weights_hash(model)
    options = {"freeze_epochs": 1} if method.startswith("dbd") and method != "dbd-nokc" \
        and method != "dbd-dis-only" else None
    promotion = instil.promote(model, images(24, seed=1), holdout=images(12, seed=2),
                               method=method, **{**QUICK, "options": options})
    assert weights_hash(model) == before
    assert promotion.report["method"] == method
    assert promotion.model is not model  # a new module, even where it keeps the weights
    if method != "finetune-es":  # which may keep M(t-1) itself when no epoch scores better
        assert weights_hash(promotion.model) != before


def test_ewc_promotes_a_vision_transformer() -> None:
    """EWC's per-sample gradients (torch.func) through attention and LayerNorm."""
    model = built("vit")
    promotion = instil.promote(model, images(24, seed=1), method="ewc", **{**QUICK,
                                                                           "options": None})
    assert weights_hash(promotion.model) != weights_hash(model)


class Items(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def write_folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = i % CLASSES
        pixels = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
        pixels[4 * k:4 * k + 4] += 170
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"c{k}" / f"{i:03d}.png")
    return root


def folder_tensors(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The folder's images as the engine normalises them, in the folder reader's order."""
    paths = sorted(root.glob("c*/*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths]))
    x = x.permute(0, 3, 1, 2).float().div_(255)
    x = x.sub_(torch.tensor(MEAN).view(1, 3, 1, 1)).div_(torch.tensor(STD).view(1, 3, 1, 1))
    return x, torch.tensor([int(p.parent.name[1]) for p in paths])


def test_every_form_of_data_gives_the_same_promotion(tmp_path: Path) -> None:
    """A folder, a Dataset, a DataLoader and a pair of tensors of the same samples train the
    same model: the data is read into the same tensor whatever its form."""
    new_dir, held_dir = write_folder(tmp_path / "new", 24, 1), write_folder(tmp_path / "h", 9, 2)
    x, y = folder_tensors(new_dir)
    hx, hy = folder_tensors(held_dir)
    fmt = instil.ImageFormat(channels=3, size=SIZE, mean=MEAN, std=STD)
    forms = {
        "folder": (new_dir, held_dir),
        "pair": ((x, y), (hx, hy)),
        "dataset": (Items(x, y), Items(hx, hy)),
        "loader": (DataLoader(TensorDataset(x, y), batch_size=5),
                   DataLoader(TensorDataset(hx, hy), batch_size=4)),
    }
    results = {}
    for form, (new, held) in forms.items():
        promotion = instil.promote(built("user"), new, holdout=held, augment=False,
                                   image_format=fmt, classes=["c0", "c1", "c2"], **QUICK)
        results[form] = (weights_hash(promotion.model), promotion.report)
    hashes = {h for h, _ in results.values()}
    assert len(hashes) == 1, results.keys()
    reports = [r for _, r in results.values()]
    for key in ("acc_before", "acc_after", "per_class"):
        assert all(r[key] == reports[0][key] for r in reports), key
    assert results["folder"][1]["new_data"]["folder"] == str(new_dir)
    assert results["dataset"][1]["new_data"]["folder"] == "new_data (Dataset)"
    # Folders without class names: their sorted sub-folder names, ImageFolder's order.
    unnamed = instil.promote(built("user"), new_dir, holdout=held_dir, augment=False,
                             image_format=fmt, **QUICK)
    assert weights_hash(unnamed.model) in hashes
    assert [row["class"] for row in unnamed.report["per_class"]] == ["c0", "c1", "c2"]


def test_without_a_holdout_a_fifth_of_every_class_is_held_out() -> None:
    promotion = instil.promote(built("user"), images(30, seed=1), seed=3, **QUICK)
    report = promotion.report
    assert report["new_data"]["images"] == 24 and report["holdout"]["images"] == 6
    assert [row["images"] for row in report["per_class"]] == [2, 2, 2]
    assert "20% of new_data (tensors) held out per class (seed 3)" in report["holdout"]["source"]
    # Named by position, for the report's lists of flips.
    files = report["negative_flips"]["files"] + report["positive_flips"]["files"]
    assert all(f["path"].startswith("new_data[") for f in files)


def test_equal_seeds_give_equal_models_and_other_seeds_others() -> None:
    data = images(24, seed=1)
    a = instil.promote(built("user"), data, seed=5, **QUICK)
    b = instil.promote(built("user"), data, seed=5, **QUICK)
    c = instil.promote(built("user"), data, seed=6, **QUICK)
    assert weights_hash(a.model) == weights_hash(b.model) != weights_hash(c.model)


def test_the_command_line_is_the_same_promotion(tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """`instil promote` on a checkpoint and folders reports what `instil.promote` reports on
    the checkpoint's model and the same folders, and writes the model it returns."""
    torch.manual_seed(0)
    net = create_model("resnet_small", (3, SIZE, SIZE), CLASSES, widths=(4, 4, 4))
    ckpt_path = tmp_path / "m.pt"
    save_checkpoint(ckpt_path, of_model(net, "resnet_small", {"widths": [4, 4, 4]},
                                        (3, SIZE, SIZE), ["c0", "c1", "c2"], MEAN, STD))
    new_dir, held_dir = write_folder(tmp_path / "new", 24, 1), write_folder(tmp_path / "h", 9, 2)
    out = tmp_path / "p.pt"
    assert main(["promote", "--model", str(ckpt_path), "--new-data", str(new_dir), "--holdout",
                 str(held_dir), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--epochs", "2", "--batch-size", "8", "--set",
                 "method_options.dbd.freeze_epochs=1", "--min-gain=-100", "--max-nfr=100"]) == 0
    capsys.readouterr()
    cli = json.loads((tmp_path / "p.report.json").read_text())
    ckpt = load_checkpoint(ckpt_path)
    api = instil.promote(build_model(ckpt, ckpt_path), new_dir, holdout=held_dir,
                         classes=ckpt.classes, image_format=instil.ImageFormat(3, SIZE, MEAN, STD),
                         settings=["method_options.dbd.freeze_epochs=1"],
                         **{**QUICK, "options": None})
    files_only = {"model", "arch", "out", "date", "train_seconds", "train", "epochs"}
    assert set(cli) == set(api.report)
    assert {k: v for k, v in cli.items() if k not in files_only} == \
        {k: v for k, v in api.report.items() if k not in files_only}

    # The same training, epoch by epoch (its clock aside), in both reports and in the file
    # the command line writes beside them.
    def untimed(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                for r in records]

    assert [r["epoch"] for r in cli["epochs"]] == [1, 2]
    assert untimed(cli["epochs"]) == untimed(api.report["epochs"])
    lines = (tmp_path / "p.epochs.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == cli["epochs"]
    assert cli["train"]["overrides"] == api.report["train"]["overrides"]
    written = build_model(load_checkpoint(out), out)
    assert weights_hash(written) == weights_hash(api.model)



@pytest.mark.parametrize("method", ["dbd", "finetune", "lwf", "ewc"])
def test_layers_the_caller_froze_stay_frozen(method: str) -> None:
    model = built("user")
    model.conv.requires_grad_(False)  # a frozen feature layer, as a user freezes a backbone
    conv = [p.detach().clone() for p in model.conv.parameters()]
    head = model.out.weight.detach().clone()
    options = {"freeze_epochs": 1} if method == "dbd" else None
    promoted = instil.promote(model, images(24, seed=1), holdout=images(12, seed=2),
                              **{**QUICK, "method": method, "options": options}).model
    assert all(torch.equal(a, b) for a, b in zip(promoted.conv.parameters(), conv))
    assert not torch.equal(promoted.out.weight, head)  # the rest learnt
    assert [p.requires_grad for p in promoted.parameters()] == \
        [p.requires_grad for p in model.parameters()]


def test_a_model_frozen_whole_for_serving_trains_whole() -> None:
    model = built("user").requires_grad_(False)
    before = model.conv.weight.detach().clone()
    promoted = instil.promote(model, images(24, seed=1), holdout=images(12, seed=2),
                              **QUICK).model
    assert not torch.equal(promoted.conv.weight, before)
    assert not any(p.requires_grad for p in promoted.parameters())  # as it came


def test_a_learner_keeps_frozen_layers_frozen_across_phases() -> None:
    model = built("user")
    model.conv.requires_grad_(False)
    conv = model.conv.weight.detach().clone()
    learner = instil.Learner(model, "dbd", epochs=2, batch_size=8,
                             options={"freeze_epochs": 1}, device="cpu")
    for seed in (1, 2):
        learner.learn(images(24, seed=seed))
    assert torch.equal(learner.model.conv.weight, conv)
    assert not torch.equal(learner.model.out.weight, model.out.weight)


# --- bad input: one line, an InstilError subclass, the model untouched ---------------------

def refused(model: nn.Module, error: type, *args: object, **kwargs: object) -> str:
    before = weights_hash(model)
    with pytest.raises(error) as caught:
        instil.promote(model, *args, **{**QUICK, **kwargs})
    assert isinstance(caught.value, instil.InstilError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "\n" not in message and message
    assert weights_hash(model) == before
    return message


def test_an_output_width_other_than_the_classes_is_refused(tmp_path: Path) -> None:
    model = built("user")
    line = refused(model, instil.ModelError, images(12, seed=1), classes=["a", "b"])
    assert "3 outputs" in line and "2 classes" in line
    folders = write_folder(tmp_path / "new", 8, 1)
    (folders / "c3").mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(folders / "c3" / "x.png")
    line = refused(model, instil.ModelError, folders,
                   image_format=instil.ImageFormat(size=SIZE))
    assert "3 outputs" in line and "4 classes" in line and "class folders" in line


def test_labels_out_of_range_are_refused() -> None:
    x, y = images(12, seed=1)
    y[5] = CLASSES
    line = refused(built("user"), instil.DataError, (x, y))
    assert "new_data[5]: label 3 is out of range" in line and "0..2" in line
    y[5] = -1
    assert "label -1" in refused(built("user"), instil.DataError, (x, y))
    x2, y2 = images(12, seed=2)
    y2[0] = 7
    line = refused(built("user"), instil.DataError, images(12, seed=1), holdout=Items(x2, y2))
    assert "holdout[0]: label 7" in line


def test_datasets_of_other_things_than_tensors_and_int_labels_are_refused() -> None:
    x, y = images(6, seed=1)
    pil = [(Image.new("RGB", (SIZE, SIZE)), 0)] * 4
    assert "new_data[0]: a Image, not an image tensor" in refused(
        built("user"), instil.DataError, pil)
    arrays = [(np.zeros((3, SIZE, SIZE), dtype=np.float32), 0)] * 4
    assert "a ndarray, not an image tensor" in refused(built("user"), instil.DataError, arrays)
    floats = [(x[i], 0.0) for i in range(4)]
    assert "new_data[0]: the label is 0.0" in refused(built("user"), instil.DataError, floats)
    assert "not an (image, label) pair" in refused(built("user"), instil.DataError,
                                                    [x[i] for i in range(4)])
    assert "uint8" in refused(built("user"), instil.DataError,
                              ((x * 10).to(torch.uint8), y))
    assert "labels must be a 1-d integer tensor" in refused(built("user"), instil.DataError,
                                                            (x, y.float()))
    assert "is not data promote reads" in refused(built("user"), instil.DataError, 42)
    mixed = [(x[0], 0), (torch.zeros(3, 16, 16), 1)]
    assert "new_data[1]: an image of shape (3, 16, 16)" in refused(
        built("user"), instil.DataError, mixed)


def test_empty_data_is_refused(tmp_path: Path) -> None:
    assert "new_data is empty" in refused(built("user"), instil.DataError, Items(
        torch.zeros(0, 3, SIZE, SIZE), torch.zeros(0, dtype=torch.int64)))
    assert "holdout is empty" in refused(built("user"), instil.DataError, images(8, seed=1),
                                         holdout=(torch.zeros(0, 3, SIZE, SIZE),
                                                  torch.zeros(0, dtype=torch.int64)))
    empty_loader = DataLoader(TensorDataset(torch.zeros(0, 3, 4, 4),
                                            torch.zeros(0, dtype=torch.int64)))
    assert "is empty" in refused(built("user"), instil.DataError, empty_loader)
    (tmp_path / "new" / "c0").mkdir(parents=True)
    assert "no images" in refused(built("user"), instil.DataError, tmp_path / "new",
                                  classes=["c0", "c1", "c2"])


def test_images_the_model_cannot_take_are_refused() -> None:
    line = refused(built("resnet18"), instil.ModelError, images(8, seed=1, channels=1))
    assert "cannot take new_data (tensors)'s samples of shape (1, 32, 32)" in line
    assert "channels" in line
    line = refused(built("vit"), instil.ModelError, images(8, seed=1, size=28))
    assert "shape (3, 28, 28)" in line and "Wrong image height" in line
    line = refused(built("user"), instil.DataError, images(8, seed=1),
                   holdout=images(4, seed=2, size=28))
    assert "holdout (tensors)'s samples have shape (3, 28, 28)" in line


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = UserNet()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x


def test_a_model_that_does_not_answer_logits_is_refused() -> None:
    assert "it returned tuple" in refused(Pair(), instil.ModelError, images(8, seed=1))


def test_methods_that_need_old_data_or_do_not_exist_are_refused() -> None:
    for name in ("er", "joint", "icarl", "der", "podnet", "onpro"):
        line = refused(built("user"), instil.MethodError, images(8, seed=1), method=name)
        assert f"method {name} trains on old data" in line and "dbd" in line
    assert "unknown method 'dbx'" in refused(built("user"), instil.MethodError,
                                             images(8, seed=1), method="dbx")
    line = refused(built("user"), instil.MethodError, images(8, seed=1), epochs=3,
                   options=None)
    assert "epochs=3 is below freeze_epochs=10" in line


def test_the_public_names_are_documented() -> None:
    """docs/api.md names every public name, and each has a docstring."""
    text = Path("docs/api.md").read_text()
    for name in instil.__all__:
        assert f"| `instil.{name}` |" in text, name
        if name != "__version__":
            assert getattr(instil, name).__doc__, name
    assert (Path(instil.__file__).parent / "py.typed").is_file()
