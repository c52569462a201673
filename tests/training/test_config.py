"""Every shipped config validates; bad keys and values fail naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoprec.config import ConfigError, load_config
from shoprec.data.config import DataConfig
from shoprec.training.config import load_experiment
from shoprec.training.fit import regime_config
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_data_preset_validates(path: Path) -> None:
    cfg = load_config(DataConfig, path)
    assert cfg.name


@pytest.mark.parametrize(
    "path", sorted((CONFIGS / "experiment").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_experiment_validates(path: Path) -> None:
    cfg = load_experiment(path)
    assert cfg.name == path.stem
    assert cfg.model_name in path.stem
    regime_config(cfg)  # the training section is validated against the model's regime


def test_includes_merge_and_overrides_win() -> None:
    cfg = load_experiment(
        CONFIGS / "experiment" / "diginetica_gru4rec.yaml",
        ["trainer.max_epochs=7", "model.layers=[64]"],
    )
    assert cfg.trainer.max_epochs == 7
    assert cfg.model["layers"] == [64]
    assert cfg.training["n_sample"] == 2048  # from model/gru4rec.yaml
    assert cfg.trainer.monitor == "val/mrr@20"  # from trainer/default.yaml


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata: {path: d}\nmodel: {name: pop}\nepochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    assert "epochs: unknown key" in str(err.value)


def test_unknown_model_key_names_model_section(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata: {path: d}\nmodel: {name: gru4rec, hiden: 3}\n")
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key"):
        load_experiment(path)


def test_wrong_type_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata: {path: d}\nmodel: {name: pop}\ntrainer: {max_epochs: lots}\n")
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs"):
        load_experiment(path)


def test_unknown_model_name(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata: {path: d}\nmodel: {name: bert4rec}\n")
    with pytest.raises(ConfigError, match="not registered"):
        load_experiment(path)


def test_bad_training_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ndata: {path: d}\nmodel: {name: gru4rec}\ntraining: {batchsize: 3}\n")
    cfg = load_experiment(path)
    with pytest.raises(ConfigError, match="batchsize: unknown key"):
        regime_config(cfg)


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    root.mkdir()
    (root / "a.yaml").write_text("include: [b.yaml]\n")
    (root / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_experiment(root / "a.yaml")
