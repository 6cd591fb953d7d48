"""scripts/average_checkpoints.py: the mean of several checkpoints of one model, and one-line errors otherwise."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_helpers import build
from script_helpers import load_script

from lgrnet.model.io import load_model, save_model

average = load_script("average_checkpoints")


def _saved(tmp_path, name: str, seed: int, **model_changes):
    model, cfg = build("lgrnet-tiny", seed=seed, **model_changes)
    return model, save_model(model, cfg, tmp_path / name)


def test_average_is_the_parameter_mean_and_loads(tmp_path):
    grec = {"grec": dataclasses.replace(build("lgrnet-tiny")[1].model.grec, enabled=True, num_queries=3)}
    models, folders = zip(*(_saved(tmp_path, f"m{i}", seed=i, **grec) for i in range(3)), strict=True)
    # An inference setting stored with one checkpoint does not stop the average; the first folder's is kept.
    config_text = (folders[2] / "config.yaml").read_text()
    (folders[2] / "config.yaml").write_text(config_text.replace("threshold: 0.5", "threshold: 0.35"))
    out = average.average_folders(list(folders), tmp_path / "avg")

    averaged, config = load_model(out)
    assert config.model.grec.threshold == 0.5
    states = [m.state_dict() for m in models]
    for key, value in averaged.state_dict().items():
        if key.startswith("text."):
            continue  # the pretrained text encoder is not stored in the folders
        if not value.is_floating_point():  # counters: the last folder's
            assert torch.equal(value, states[2][key]), key
            continue
        expected = (states[0][key].double() + states[1][key].double() + states[2][key].double()) / 3
        torch.testing.assert_close(value.double(), expected.to(value.dtype).double(), rtol=0, atol=0, msg=key)
    # Different seeds give different weights: the mean is none of them.
    key = next(k for k, v in states[0].items() if v.is_floating_point() and v.numel() > 10 and "text." not in k)
    assert not torch.equal(averaged.state_dict()[key], states[0][key])


def test_other_architecture_and_bad_folders_are_one_line_errors(tmp_path):
    model, first = _saved(tmp_path, "a", seed=0)
    _, second = _saved(tmp_path, "b", seed=1, num_layers=model.config.num_layers + 1)
    with pytest.raises(SystemExit) as exit_info:
        average.main([str(first), str(second), "--out", str(tmp_path / "avg")])
    message = str(exit_info.value)
    assert message.startswith("average_checkpoints: error: ") and "\n" not in message
    assert str(second) in message and "model.num_layers" in message
    assert not (tmp_path / "avg").exists()

    with pytest.raises(SystemExit, match="not a model folder"):
        average.main([str(first), str(tmp_path / "missing"), "--out", str(tmp_path / "avg")])
    with pytest.raises(SystemExit, match="already exists"):
        average.main([str(first), str(first), "--out", str(second)])
    with pytest.raises(SystemExit, match="at least two"):
        average.main([str(first), "--out", str(tmp_path / "avg")])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text((first / "config.yaml").read_text())
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SystemExit, match="cannot read"):
        average.main([str(first), str(tmp_path / "c"), "--out", str(tmp_path / "avg")])
