"""Config loading: defaults, base inheritance, overrides, path resolution, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import REPO

from seg_training.cli import CONFIG_DIR, parse_overrides
from seg_training.engine.config import ConfigError, load_config, model_config_for, parse_value
from seg_training.models import ModelConfig


def test_override_styles_and_value_parsing():
    pairs = parse_overrides(
        ["--train.epochs", "3", "--train.lr=1e-4", "--data.scale_range", "[0.5, 1.5]"],
        ["loss.dice=0.5", "train.init_from=null"],
    )
    assert dict(pairs) == {
        "loss.dice": 0.5,
        "train.init_from": None,
        "train.epochs": 3,
        "train.lr": 1e-4,
        "data.scale_range": [0.5, 1.5],
    }
    assert parse_value("1e-4") == pytest.approx(1e-4) and isinstance(parse_value("1e-4"), float)
    assert parse_value("true") is True and parse_value("abc") == "abc"


def test_yaml_scientific_floats_and_base_inheritance(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(
        "data:\n  root: data/ccp\n  classes: [a, b]\ntrain:\n  lr: 5e-4\n  epochs: 7\n"
    )
    child = tmp_path / "configs" / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  epochs: 3\n")
    config = load_config("seg", child, [("train.weight_decay", 0.0)])
    assert config["train"]["lr"] == pytest.approx(5e-4)
    assert config["train"]["epochs"] == 3
    assert config["train"]["weight_decay"] == 0.0
    assert config["output"]["name"] == "child"
    # data paths in a file resolve against the repository holding it, not the working directory
    assert config["data"]["root"] == str(tmp_path / "data" / "ccp")


def test_relative_override_paths_resolve_against_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("seg", CONFIG_DIR / "smoke_seg.yaml", [("data.root", "mydata")])
    assert config["data"]["root"] == str(tmp_path / "mydata")


def test_shipped_smoke_config_points_at_test_data():
    config = load_config("seg", CONFIG_DIR / "smoke_seg.yaml")
    assert Path(config["data"]["root"]) == REPO / "tests" / "data" / "ccp"


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="train.epochs.*number"):
        load_config("seg", CONFIG_DIR / "smoke_seg.yaml", [("train.epochs", "many")])


def test_config_for_other_task_is_rejected():
    with pytest.raises(ConfigError, match="train-cls"):
        load_config("seg", CONFIG_DIR / "smoke_cls.yaml")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_describes_a_valid_model(path):
    import yaml

    raw = yaml.safe_load(path.read_text())
    task = raw["task"]
    # A starter config (my_data) leaves the data to the user: supply what its comments ask for.
    data = raw.get("data") or {}
    overrides = ([("data.root", "tests/data/ccp")] if "root" in data and data["root"] is None else []) + (
        [("data.classes", "background,person")] if "classes" in data and data["classes"] is None else []
    )
    config = load_config(task, path, overrides)
    num_classes = len(config["data"]["classes"]) if task == "seg" else 1000
    model = ModelConfig.from_dict(model_config_for(config, num_classes))
    assert model.task == task
