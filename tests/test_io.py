"""Model folder save/load: exact reproduction, text weights omitted on request, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_helpers import make_inputs
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_twin

from lgrnet.errors import CheckpointError
from lgrnet.model.builder import build_model
from lgrnet.model.io import load_model, load_weights, save_model
from lgrnet.model.lgrnet import LGRNet


@pytest.fixture()
def saved(tmp_path):
    cfg = tiny_twin("lgrnet-swin-s")
    torch.manual_seed(3)
    model = LGRNet(cfg.model, cfg.loss).eval()
    save_model(model, cfg, tmp_path / "m")
    return model, cfg, tmp_path / "m"


def test_save_and_load_reproduces_outputs_exactly(saved):
    model, cfg, folder = saved
    assert (folder / "config.yaml").is_file() and (folder / "model.safetensors").is_file()
    loaded, loaded_cfg = load_model(folder)
    assert loaded_cfg == cfg
    assert not loaded.training
    inputs = make_inputs(cfg.model)
    with torch.no_grad():
        a, b = model(**inputs), loaded(**inputs)
    assert torch.equal(a.layer_boxes, b.layer_boxes)
    assert torch.equal(a.loss, b.loss)


def test_text_weights_left_out_when_not_saved(tmp_path):
    cfg = tiny_twin("lgrnet-swin-s")
    cfg.model.text = dataclasses.replace(cfg.model.text, name="minilm", pretrained=True, config_overrides={},
                                         freeze=True, save_weights=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss).eval()  # the pretrained MiniLM
    save_model(model, cfg, tmp_path / "m")
    keys = load_file(str(tmp_path / "m" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("text.") for k in keys)
    loaded, _ = load_model(tmp_path / "m")
    inputs = make_inputs(cfg.model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).pred_boxes, loaded(**inputs).pred_boxes)


def test_missing_folder_or_file_is_a_clear_error(saved, tmp_path):
    _, _, folder = saved
    with pytest.raises(CheckpointError, match="nowhere: no such folder"):
        load_model(tmp_path / "nowhere")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_model(folder)


def test_mismatching_weights_are_a_clear_error(saved):
    _, _, folder = saved
    state = load_file(str(folder / "model.safetensors"))
    state.pop("head.layers.0.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing keys.*head.layers.0.weight.*1 unexpected"):
        load_model(folder)


def test_wrong_shape_is_a_clear_error(saved):
    _, _, folder = saved
    state = load_file(str(folder / "model.safetensors"))
    state["head.layers.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="wrong shape.*head.layers.0.weight"):
        load_model(folder)


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="someone/some-lgrnet: not a local folder.*hub download failed"):
        load_model("someone/some-lgrnet")


# --------------------------------------------------------------------------------------------------------------
# load_weights: the one loader of a model folder's weights (load_model, training's resume and init_from)


def _one_line_error(call, *patterns: str) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


def test_load_weights_loads_the_folder_into_a_built_model(saved):
    model, cfg, folder = saved
    torch.manual_seed(11)
    other = LGRNet(cfg.model, cfg.loss)
    state = load_weights(other, folder)
    stored = load_file(str(folder / "model.safetensors"))
    assert set(state) == set(stored) == set(other.state_dict())
    assert all(torch.equal(other.state_dict()[k], stored[k]) for k in stored)


def test_load_weights_errors_name_the_file_and_the_first_mismatch(saved, tmp_path):
    model, cfg, folder = saved
    weights = folder / "model.safetensors"
    _one_line_error(lambda: load_weights(model, tmp_path / "empty"),
                    f"model folder {tmp_path / 'empty'}: missing model.safetensors")

    state = load_file(str(weights))
    state["head.layers.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(weights))
    expected = tuple(model.state_dict()["head.layers.0.weight"].shape)
    _one_line_error(lambda: load_weights(model, folder),
                    f"{weights}: 1 tensors have the wrong shape, first head.layers.0.weight: (3, 3) in the file, "
                    f"{expected} in the model")

    del state["head.layers.0.weight"]
    state = {k: v for k, v in state.items() if k != "text.encoder.embeddings.word_embeddings.weight"}
    save_file(state, str(weights))  # other text.* keys are there: the encoder was saved, one tensor is missing
    _one_line_error(lambda: load_weights(model, folder), f"{weights} does not fit the model: 2 missing keys (first: ",
                    "text.encoder.embeddings.word_embeddings.weight")

    weights.write_bytes(weights.read_bytes()[:-64])  # cut short
    _one_line_error(lambda: load_weights(model, folder), f"{weights}: not a readable safetensors file")


def test_load_weights_of_another_architecture_is_a_clear_error(saved, tmp_path):
    model, _, _ = saved
    other = tiny_twin("lgrnet-r101")
    torch.manual_seed(0)
    folder = save_model(LGRNet(other.model, other.loss), other, tmp_path / "resnet")
    message = _one_line_error(lambda: load_weights(model, folder, fits="the swin model"),
                              f"{folder / 'model.safetensors'} does not fit the swin model: ", "missing keys (first: "
                              "visual.backbone.", "unexpected keys (first: visual.backbone.")
    assert message.count("first:") == 2
