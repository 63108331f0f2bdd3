from __future__ import annotations

from pathlib import Path

import pytest

from instil.config import load_config
from instil.errors import InstilError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_presets_load(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem
    assert config.methods and config.order_seeds


def test_overrides_by_dotted_path_are_typed(tmp_path: Path) -> None:
    config = load_config(None, ["phase.epochs=3", "base.lr=1", "order_seeds=[0, 2]",
                                "data.root=/x", "data.options.drift_degrees=30"])
    assert config.phase.epochs == 3
    assert config.base.lr == 1.0 and isinstance(config.base.lr, float)
    assert config.order_seeds == [0, 2]
    assert config.data.root == "/x"
    assert config.data.options == {"drift_degrees": 30}


@pytest.mark.parametrize("item,message", [
    ("phase.epoch=3", "unknown config key 'phase.epoch'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("phase.epochs=many", "'phase.epochs' must be int"),
    ("phase", "expected key=value"),
])
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(InstilError, match=message):
        load_config(None, [item])


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base:\n  epochs: 2\n  lr_max: 3\n")
    with pytest.raises(InstilError, match="unknown config key 'base.lr_max'"):
        load_config(path)


def test_nested_keys_not_given_keep_the_parent_default() -> None:
    config = load_config(None, ["phase.epochs=3"])
    assert config.phase.lr == 0.01  # Config's phase default, not TrainConfig's 0.1
    assert config.base.lr == 0.1


def test_invalid_values_are_refused() -> None:
    with pytest.raises(InstilError, match="schedule 'linear'"):
        load_config(None, ["base.schedule=linear"])
    with pytest.raises(InstilError, match="lr=0.0"):
        load_config(None, ["phase.lr=0"])


def test_method_budgets_change_one_methods_phase_budget_only() -> None:
    from instil.config import phase_budget
    from instil.engine.protocol import budget_of, create_methods

    config = load_config(Path("configs/fmnist-iil10.yaml"),
                         ["methods=[finetune, lwf, onpro]",
                          "method_budgets={finetune: {lr: 0.003, epochs: 4}, onpro: {lr: 0.1}}"])
    finetune, lwf, onpro = create_methods(config)
    assert (budget_of(config, finetune).lr, budget_of(config, finetune).epochs) == (0.003, 4)
    assert budget_of(config, finetune).batch_size == config.phase.batch_size  # the rest kept
    assert budget_of(config, lwf) == config.phase
    # A method's own adaptation applies after the change: onpro's one pass, its Adam's lr.
    assert phase_budget(config, "onpro").lr == 0.1 and budget_of(config, onpro).epochs == 1


def test_joint_method_budget_changes_the_base_budget_it_retrains_with() -> None:
    from instil.engine.protocol import budget_of, create_methods

    config = load_config(Path("configs/fmnist-iil10.yaml"),
                         ["methods=[joint, finetune]", "method_budgets={joint: {epochs: 7}}"])
    joint, finetune = create_methods(config)
    # joint retrains from scratch with the base budget; its entry must change that budget,
    # not the phase budget it never uses.
    assert budget_of(config, joint).epochs == 7 != config.base.epochs
    assert budget_of(config, joint).lr == config.base.lr
    assert budget_of(config, finetune) == config.phase
    plain = load_config(Path("configs/fmnist-iil10.yaml"), ["methods=[joint]"])
    assert budget_of(plain, create_methods(plain)[0]) == plain.base


@pytest.mark.parametrize(("item", "message"), [
    ("method_budgets={finetun: {lr: 0.1}}", "method_budgets.finetun: no such method"),
    ("method_budgets={finetune: {lrr: 0.1}}", "method_budgets.finetune.lrr"),
    ("method_budgets={finetune: {lr: -1}}", "lr=-1"),
    ("method_options.dbdd.sigma=0.5", "method_options.dbdd: no such method"),
    ("method_options.dbd.sigmaa=0.5", "method_options.dbd.sigmaa"),
])
def test_bad_method_budgets_and_options_are_refused(item: str, message: str) -> None:
    from instil.engine.protocol import create_methods

    config = load_config(Path("configs/fmnist-iil10.yaml"), ["methods=[finetune]", item])
    with pytest.raises(InstilError, match=message):
        create_methods(config)


def test_a_run_records_each_methods_budget(tmp_path: Path, toy_args: list[str]) -> None:
    import json

    from instil.cli import main

    out = tmp_path / "out"
    assert main(["run", "configs/toy2d.yaml", "--out", str(out), "--no-progress", *toy_args,
                 "--set", "order_seeds=[0]", "--set", "methods=[finetune, lwf]",
                 "--set", "method_budgets={finetune: {epochs: 1, lr: 0.05}}"]) == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert (runs["finetune"]["budget"]["epochs"], runs["finetune"]["budget"]["lr"]) == (1, 0.05)
    assert (runs["lwf"]["budget"]["epochs"], runs["lwf"]["budget"]["lr"]) == (2, 0.01)


def test_presets_are_the_yaml_files_of_configs_by_name() -> None:
    from instil.config import presets

    assert presets() == {path.stem: path.resolve() for path in CONFIGS}


def test_a_preset_name_resolves_to_its_file_and_a_path_stays_a_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from instil.config import config_path

    checkout = Path(__file__).parents[1]
    assert config_path("toy2d") == checkout / "configs" / "toy2d.yaml"
    monkeypatch.chdir(tmp_path)  # a path is read as given, relative to the working folder
    for given in ("configs/toy2d.yaml", "mine.yaml", "sub/toy2d"):
        assert config_path(given) == Path(given)
    Path("toy2d").write_text("name: mine\n")  # an existing file wins over a preset
    assert config_path("toy2d") == Path("toy2d")
    assert load_config(config_path("toy2d")).name == "mine"


def test_an_unknown_preset_name_is_refused_with_the_names() -> None:
    from instil.config import config_path

    with pytest.raises(InstilError, match=r"fmnsit-quick: neither a config file nor a preset; "
                                          r"presets: cifar100-iil10, .*fmnist-quick, .*toy2d"):
        config_path("fmnsit-quick")


@pytest.mark.parametrize("preset", ["cifar100-iil10", "imagenet100-iil10"])
def test_the_paper_benchmarks_run_the_papers_method_and_every_baseline(preset: str) -> None:
    from instil.engine.protocol import budget_of, method_for
    from instil.methods.dbd import ema_steps_per_phase

    config = load_config(Path(f"configs/{preset}.yaml"), [])
    fmnist = load_config(Path("configs/fmnist-iil10.yaml"), [])
    assert set(fmnist.methods) <= set(config.methods)
    assert {"dbd", "dbd-nofl", "dbd-nodis", "dbd-nokc", "dbd-dis-only", "lwf",
            "joint"} <= set(config.methods)
    for name in config.methods:  # every method accepts the preset's phase budget
        method = method_for(config, name)
        method.check_budget(budget_of(config, method))
    dbd = method_for(config, "dbd")
    assert ema_steps_per_phase(config.phase.epochs, dbd.options.freeze_epochs) > 1


def test_a_run_without_methods_is_refused_in_one_line(tmp_path: Path, toy_args: list[str],
                                                      capsys: pytest.CaptureFixture) -> None:
    from instil.cli import main

    code = main(["run", "configs/toy2d.yaml", "--out", str(tmp_path / "out"), "--no-progress",
                 *toy_args, "--set", "methods=[]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "methods=[]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "results.json").exists()
