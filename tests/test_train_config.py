"""Training configs: relative input paths in a YAML are read from the YAML's folder, whatever the current folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaf_fer.common import ConfigError
from leaf_fer.train.config import TrainConfig, read_config_file

REPO = Path(__file__).resolve().parents[1]


def test_relative_inputs_are_read_beside_the_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "recipes" / "mine.yaml"
    config.parent.mkdir()
    config.write_text("data: ../data/train.npz\nextra_data:\n  - posed/labels.csv@4\n  - /abs/web.csv@0.3\n"
                      "unlabeled_data: 'faces/**/*.faces.npz'\ninit_weights: base.safetensors\noutput: runs/mine\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    values = read_config_file(config)
    assert (elsewhere / values["data"]).resolve() == tmp_path / "data" / "train.npz"
    path, _, weight = values["extra_data"][0].rpartition("@")
    assert (elsewhere / path).resolve() == config.parent / "posed" / "labels.csv" and weight == "4"
    assert values["extra_data"][1] == "/abs/web.csv@0.3", "absolute paths stay as they are"
    assert values["unlabeled_data"].endswith("recipes/faces/**/*.faces.npz")
    assert (elsewhere / values["init_weights"]).resolve() == config.parent / "base.safetensors"
    assert values["output"] == "runs/mine", "outputs stay relative to where the run starts"
    assert TrainConfig.from_dict(values).data == values["data"]


def test_the_shipped_recipes_name_the_same_files_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    from_repo = read_config_file("train/configs/default.yaml")
    monkeypatch.chdir(tmp_path)
    from_tmp = read_config_file(REPO / "train" / "configs" / "default.yaml")
    assert from_repo["data"] == "../shared/data/fer2013_train.npz"
    assert from_repo["init_weights"] == "train/weights/fer2013_base_m.safetensors"
    for name in ("data", "val_data", "init_weights"):
        assert (tmp_path / from_tmp[name]).resolve() == (REPO / from_repo[name]).resolve()


def test_a_bad_config_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_config_file(tmp_path / "list.yaml")


def test_options_that_need_initial_weights_refuse_to_run_without_them() -> None:
    from leaf_fer.train.config import TrainConfig

    for option in ({"distill_initial": 0.5}, {"weight_ensemble": 0.9}, {"anchor_data": ["faces/@0.5"]},
                   {"soup_with": ["other/model.safetensors"]}):
        with pytest.raises(ConfigError, match="give --init-weights"):
            TrainConfig.from_dict({"data": "faces.npz", **option})
    with pytest.raises(ConfigError, match="distill initial must be in"):
        TrainConfig.from_dict({"data": "faces.npz", "init_weights": "w.safetensors", "distill_initial": 1.5})
