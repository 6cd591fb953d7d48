from pathlib import Path

import pytest
from tiny_configs import tiny_twin

from lgrnet.config import PRESETS, Config, ConfigError, load_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_load_and_round_trip_through_yaml(preset: str, tmp_path: Path) -> None:
    config = load_config(preset)
    assert config.name == preset
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_reference_and_paper_presets_differ_where_spec_section_14_says() -> None:
    ref, paper = load_config("lgrnet-swin-s"), load_config("lgrnet-paper-swin-s")
    assert ref.model.visual.query_modulation and not paper.model.visual.query_modulation
    assert (ref.model.pred_token, paper.model.pred_token) == ("zero", "learnable")
    assert (ref.model.cross_attn_projections, paper.model.cross_attn_projections) == (False, True)
    assert (ref.loss.align_weight, paper.loss.align_weight) == (1.0, 2.0)
    assert ref.loss.align_symmetric and not paper.loss.align_symmetric
    assert load_config("lgrnet-r101").model.visual.kind == "resnet"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="model.visual.qda_rnak"):
        load_config("lgrnet-tiny", ["model.visual.qda_rnak=3"])


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: lgrnet-tiny\ntrain:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.hidden_dim=abc", "model.hidden_dim"), ("train.precision=fp8", "train.precision"),
     ("model.text.freeze=3", "model.text.freeze"), ("data.augment.scales=5", "data.augment.scales")],
)
def test_wrong_type_is_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("lgrnet-tiny", [override])


def test_yaml_base_chain_and_scientific_notation(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: lgrnet-swin-s\ntrain:\n  lr: 1e-4\n  epochs: 5\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  epochs: 7\n")
    config = load_config(tmp_path / "b.yaml", ["train.lr=3e-4"])
    assert config.train.epochs == 7
    assert config.train.lr == pytest.approx(3e-4)
    assert isinstance(config, Config)


def test_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config("nope.yaml")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_tiny_twin_keeps_switches(preset: str) -> None:
    full, twin = load_config(preset), tiny_twin(preset)
    assert twin.model.visual.kind == full.model.visual.kind
    assert twin.model.visual.query_modulation == full.model.visual.query_modulation
    assert twin.model.coord_embed == full.model.coord_embed
    assert twin.model.cross_attn_projections == full.model.cross_attn_projections
    assert twin.model.text.pretrained is False and twin.model.hidden_dim < full.model.hidden_dim
