"""``train.init_from``: a model folder or a shipped name gives the run its architecture (load_train_config), the
config's own model keys win only where the user set them on purpose, and a mismatch is a one-line error naming
the setting. End to end: ``lgrnet train --config configs/custom.yaml --set data.root=DIR`` fine-tunes the shipped
model (here a tiny stand-in in place of the package's synthref-tiny folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error, run_cli_captured
from tiny_configs import tiny_twin

from lgrnet.config import explicit_keys, load_config
from lgrnet.errors import CheckpointError
from lgrnet.model.io import load_train_config
from lgrnet.model.registry import SHIPPED_MODEL_ENV, has_model, shipped_model_folder

REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "configs" / "custom.yaml"


_cli = run_cli_captured
_one_line_error = one_line_error


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny model folder whose architecture differs from every preset (2 reasoning layers of width 32)."""
    from lgrnet.model.io import save_model
    from lgrnet.model.lgrnet import LGRNet

    config = tiny_twin("lgrnet-tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("init") / "tiny"
    save_model(LGRNet(config.model, config.loss), config, path)
    return path


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_architecture_comes_from_the_init_folder(folder, tmp_path):
    user = _yaml(tmp_path / "user.yaml", f"base: lgrnet-tiny\ntrain:\n  init_from: {folder}\n  lr: 0.001\n")
    config = load_train_config(user)
    assert config.model == load_config(folder / "config.yaml").model
    assert config.model != load_config("lgrnet-tiny").model  # the preset's model is not what runs
    assert config.train.init_from == str(folder.resolve()) and config.train.lr == 0.001
    assert load_config(user).model == load_config("lgrnet-tiny").model  # plain load_config leaves it alone


def test_explicit_model_keys_win_when_the_weights_still_fit(folder, tmp_path):
    user = _yaml(tmp_path / "user.yaml", f"base: lgrnet-tiny\ntrain:\n  init_from: {folder}\n")
    config = load_train_config(user, ["model.dropout=0.2", "model.visual_pos_input=false"])
    assert config.model.dropout == 0.2 and config.model.visual_pos_input is False
    assert config.model.num_layers == 2 and config.model.hidden_dim == 32  # the rest is the folder's


def test_a_setting_that_breaks_the_weights_is_named(folder, tmp_path):
    user = _yaml(tmp_path / "user.yaml", f"base: lgrnet-tiny\ntrain:\n  init_from: {folder}\n")
    with pytest.raises(CheckpointError) as info:
        load_train_config(user, ["model.dropout=0.2", "model.num_layers=3"])
    message = str(info.value)
    assert message.startswith(f"train.init_from {folder}: model.num_layers is 2 in the model folder but 3 in the "
                              "config (")
    assert "\n" not in message
    # A key set by a YAML file of the base chain is on purpose too.
    parent = _yaml(tmp_path / "parent.yaml", "base: lgrnet-tiny\nmodel:\n  hidden_dim: 64\n")
    child = _yaml(tmp_path / "child.yaml", f"base: {parent.name}\ntrain:\n  init_from: {folder}\n")
    with pytest.raises(CheckpointError, match="model.hidden_dim is 32 in the model folder but 64 in the config"):
        load_train_config(child)


def test_explicit_keys_count_yaml_files_and_overrides_not_presets(tmp_path):
    _yaml(tmp_path / "parent.yaml", "base: lgrnet-tiny\nmodel:\n  visual:\n    timm_kwargs: {a: 1}\n")
    child = _yaml(tmp_path / "child.yaml", "base: parent.yaml\nname: x\ntrain:\n  lr: 0.1\n")
    keys = explicit_keys(child, ["model.num_layers=4", "data.augment={crop: true, flip: false}"])
    assert keys == {"name", "train.lr", "model.visual.timm_kwargs", "model.num_layers", "data.augment.crop",
                    "data.augment.flip"}
    assert explicit_keys("lgrnet-small") == set()


def test_shipped_name_and_custom_yaml_fine_tune_end_to_end(folder, tmp_path, monkeypatch):
    """The custom-data command with nothing but the data folder (and tiny limits for the test) starts from the
    shipped model: its weights are the run's step-0 weights and its architecture the run's."""
    from safetensors.torch import load_file

    from lgrnet.synth import ensure_synthref

    data = tmp_path / "data"
    ensure_synthref(data, seed=2, num_train=8, num_val=4, num_test=0, workers=1)
    import lgrnet.model.registry as registry

    weights = tmp_path / "weights"  # the package's weights folder, holding the tiny stand-in as synthref-tiny
    shutil.copytree(folder, weights / "synthref-tiny")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    assert load_config(CUSTOM).train.init_from == "synthref-tiny"
    folder = weights / "synthref-tiny"
    out = tmp_path / "run"
    code, stdout, stderr = _cli(["train", "--config", str(CUSTOM), "--set", f"data.root={data}",
                                 "--set", "train.max_steps=1", "--set", "train.batch_size=4",
                                 "--set", "data.num_workers=0", "--set", "train.warmup_steps=0",
                                 "--output-dir", str(out), "--device", "cpu"])
    assert code == 0, stderr
    assert f"initialised from {folder.resolve()}" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1
    run_config = load_config(out / "config.yaml")
    assert run_config.model == load_config(folder / "config.yaml").model and run_config.name == "custom"
    best = out / "checkpoints" / "best"
    assert has_model(best)
    start, tuned = load_file(str(folder / "model.safetensors")), load_file(str(best / "model.safetensors"))
    assert start.keys() == tuned.keys()
    # One step moved the weights a little from the start weights (not from a fresh initialisation).
    key = "head.layers.0.weight"
    assert 0 < (tuned[key] - start[key]).abs().max() < 0.05


def test_bad_init_from_is_a_one_line_error(folder, tmp_path):
    code, _, err = _cli(["train", "--config", str(CUSTOM), "--set", "train.init_from=synthref-large",
                         "--output-dir", str(tmp_path / "x")])
    line = _one_line_error(err, "train")
    assert code == 2 and "train.init_from synthref-large: no such folder" in line
    assert "shipped models: synthref, synthref-small" in line
    user = _yaml(tmp_path / "user.yaml", f"base: lgrnet-tiny\ntrain:\n  init_from: {folder}\n")
    code, _, err = _cli(["train", "--config", str(user), "--set", "model.hidden_dim=48",
                         "--output-dir", str(tmp_path / "x")])
    line = _one_line_error(err, "train")
    assert code == 2 and "model.hidden_dim is 32 in the model folder but 48 in the config" in line
    assert not (tmp_path / "x").exists()


def test_another_image_size_resamples_the_position_table(folder, tmp_path):
    from safetensors.torch import load_file

    from lgrnet.model.io import load_weights
    from lgrnet.model.lgrnet import LGRNet

    user = _yaml(tmp_path / "user.yaml", f"base: lgrnet-tiny\ntrain:\n  init_from: {folder}\n")
    config = load_train_config(user, ["model.image_size=192"])  # set on purpose: fine-tune at a higher resolution
    assert config.model.image_size == 192
    model = LGRNet(config.model, config.loss)
    with pytest.raises(CheckpointError, match="visual_pos.weight"):
        load_weights(model, folder)
    load_weights(model, folder, resample_positions=True)
    stored = load_file(str(folder / "model.safetensors"))
    table = model.visual_pos.weight.detach()
    assert len(table) == 1 + sum(h * w for h, w in model.token_shapes) > len(stored["visual_pos.weight"])
    assert torch.equal(table[0], stored["visual_pos.weight"][0])  # the prediction token's row as it was
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if k != "visual_pos.weight")


def test_init_from_null_trains_the_preset_model():
    config = load_train_config(CUSTOM, ["train.init_from=null"])
    assert config.train.init_from is None and config.model == load_config("lgrnet-tiny").model


@pytest.mark.skipif(not (has_model(shipped_model_folder("synthref-tiny"))
                         and has_model(shipped_model_folder("synthref-small"))), reason="no shipped model in this build")
def test_custom_yaml_takes_the_shipped_models_architecture(monkeypatch):
    monkeypatch.delenv(SHIPPED_MODEL_ENV, raising=False)
    tiny, small = shipped_model_folder("synthref-tiny"), shipped_model_folder("synthref-small")
    config = load_train_config(CUSTOM, ["data.root=somewhere"])
    assert config.model == load_config(tiny / "config.yaml").model == load_config("lgrnet-tiny").model
    assert Path(config.train.init_from) == tiny.resolve()
    # The setting that used to end in size mismatches: a config of one size starting from a model of the other.
    config = load_train_config(CUSTOM, ["train.init_from=synthref"])
    assert config.model == load_config(small / "config.yaml").model
    assert config.model.num_layers == 6 and config.model.hidden_dim == 256
    with pytest.raises(CheckpointError, match=r"^train.init_from synthref-tiny: model.num_layers is 3 in the model "
                                              r"folder but 6 in the config \("):
        load_train_config(CUSTOM, ["model.num_layers=6"])
