"""The shipped model registry (names that say what a folder holds, one resolver for every command) and the shipped
SynthRef model used the way a new user does: ``lgrnet eval --checkpoint synthref`` with and without ``--data``, a
single JSONL file as a split of its own, ``--precision`` spellings, an unwritable ``--output``."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli_captured

from lgrnet.cli import main
from lgrnet.config import load_config
from lgrnet.errors import CheckpointError
from lgrnet.model.registry import (
    SHIPPED_MODEL_ENV,
    WEIGHTS_DIR,
    has_model,
    resolve_model,
    shipped_model_folder,
    shipped_names,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = WEIGHTS_DIR / "synthref-small"
needs_shipped = pytest.mark.skipif(not has_model(SHIPPED), reason="no shipped model in this build")


_cli = run_cli_captured
_one_line_error = one_line_error


# --------------------------------------------------------------------------------------------------------------
# Registry


def test_shipped_names_resolve_to_the_folder_named_after_its_architecture(monkeypatch):
    monkeypatch.delenv(SHIPPED_MODEL_ENV, raising=False)
    assert shipped_names() == ["synthref", "synthref-small", "synthref-tiny", "synthref-g", "synthref-g-small"]
    assert shipped_model_folder("synthref") == shipped_model_folder("synthref-small") == SHIPPED
    tiny = shipped_model_folder("synthref-tiny")
    if has_model(tiny):  # the name says the architecture
        config = load_config(tiny / "config.yaml")
        assert config.name == "synthref-tiny" and config.model == load_config("lgrnet-tiny").model
    if has_model(SHIPPED):
        assert resolve_model("synthref") == resolve_model("synthref-small") == SHIPPED
        config = load_config(SHIPPED / "config.yaml")
        assert config.name == "synthref-small" and config.model == load_config("lgrnet-small").model


def test_a_wrong_name_lists_the_known_names(tmp_path):
    with pytest.raises(CheckpointError) as info:
        resolve_model("synthref-large", "--checkpoint")
    assert str(info.value) == ("--checkpoint synthref-large: no such folder, and not a shipped model name, nor a "
                               "Hugging Face hub id owner/name (shipped models: synthref, synthref-small, "
                               "synthref-tiny, synthref-g, synthref-g-small)")
    with pytest.raises(CheckpointError, match=r"^train.init_from nope: no such folder, and not a shipped model "
                                              r"name \(shipped models: synthref, synthref-small, synthref-tiny, "
                                              r"synthref-g, synthref-g-small\)$"):
        resolve_model("nope", "train.init_from", hub=False)
    with pytest.raises(CheckpointError, match="missing: no such folder$"):
        resolve_model(tmp_path / "missing")


def test_local_folders_come_before_names(tmp_path, monkeypatch):
    run = tmp_path / "run"  # a training output folder: the run's config.yaml beside checkpoints/
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    (run / "checkpoints" / "last" / "model.safetensors").write_bytes(b"")
    assert resolve_model(run) == run / "checkpoints" / "last"
    (run / "checkpoints" / "best").mkdir()
    (run / "checkpoints" / "best" / "model.safetensors").write_bytes(b"")
    assert resolve_model(run) == run / "checkpoints" / "best"
    (tmp_path / "synthref").mkdir()  # a folder of that name in the working folder is what the user means
    (tmp_path / "synthref" / "config.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("synthref") == Path("synthref")
    with pytest.raises(CheckpointError, match="neither a model folder"):
        resolve_model(tmp_path / "run" / "checkpoints")


def test_the_environment_variable_replaces_only_the_default_alias(tmp_path, monkeypatch):
    from tiny_configs import tiny_twin

    from lgrnet.model.io import save_model
    from lgrnet.model.lgrnet import LGRNet

    config = tiny_twin("lgrnet-tiny")
    folder = save_model(LGRNet(config.model, config.loss), config, tmp_path / "other")
    monkeypatch.setenv(SHIPPED_MODEL_ENV, str(folder))
    assert resolve_model("synthref") == folder
    assert shipped_model_folder("synthref-small") == SHIPPED
    monkeypatch.setenv(SHIPPED_MODEL_ENV, str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="synthref: the shipped model is not in this build"):
        resolve_model("synthref")


def test_synthref_g_names_the_generalized_model_folder_and_is_plainly_absent_without_weights(tmp_path, monkeypatch):
    import lgrnet.model.registry as registry
    from lgrnet.model.registry import SHIPPED_GREC_MODEL_ENV, caveat_for

    monkeypatch.delenv(SHIPPED_MODEL_ENV, raising=False)
    monkeypatch.delenv(SHIPPED_GREC_MODEL_ENV, raising=False)
    assert shipped_model_folder("synthref-g") == shipped_model_folder("synthref-g-small") \
        == WEIGHTS_DIR / "synthref-g-small"
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    folder = tmp_path / "weights" / "synthref-g-small"
    for state in ("absent", "empty"):  # no folder at all, then a folder without weights
        if state == "empty":
            folder.mkdir(parents=True)
        with pytest.raises(CheckpointError) as info:
            resolve_model("synthref-g", "--checkpoint")
        assert str(info.value) == (f"--checkpoint synthref-g: the shipped model is not in this build ({folder} "
                                   "holds no config.yaml + model.safetensors)")
    from PIL import Image

    Image.new("RGB", (32, 24)).save(tmp_path / "scene.png")
    code, _, err = _cli(["predict", "--checkpoint", "synthref-g", "--image", str(tmp_path / "scene.png"), "--text",
                         "all the circles"])
    assert code == 2 and "synthref-g: the shipped model is not in this build" in _one_line_error(err, "predict")

    from inference_helpers import make_tiny_checkpoint

    make_tiny_checkpoint(folder, "lgrnet-tiny", overrides=["model.grec.enabled=true"])
    assert resolve_model("synthref-g") == resolve_model("synthref-g-small") == folder
    assert load_config(folder / "config.yaml").model.grec.enabled
    assert "SynthRef-G" in caveat_for(folder) and caveat_for(folder) != caveat_for(tmp_path / "weights" /
                                                                                   "synthref-small")
    # Its own environment variable stands in for synthref-g only (and its folder carries the same caveat).
    other = tmp_path / "elsewhere"
    monkeypatch.setenv(SHIPPED_GREC_MODEL_ENV, str(other))
    assert shipped_model_folder("synthref-g") == other and shipped_model_folder("synthref-g-small") == folder
    assert shipped_model_folder("synthref") == tmp_path / "weights" / "synthref-small"
    assert caveat_for(other) == caveat_for(folder)
    with pytest.raises(CheckpointError, match="synthref-g: the shipped model is not in this build"):
        resolve_model("synthref-g")


def test_the_package_data_ships_every_file_of_the_model_folders():
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"\[tool\.setuptools\.package-data\]\s*lgrnet\s*=\s*\[(.*?)\]", text, re.S)
    patterns = re.findall(r'"([^"]+)"', block.group(1))
    assert not any(p.startswith("presets/") for p in patterns)  # no such folder
    package = WEIGHTS_DIR.parent
    for path in WEIGHTS_DIR.rglob("*"):
        if path.is_file():
            assert any(path.relative_to(package).match(p) for p in patterns), path


@pytest.mark.parametrize("name", ["synthref-small", "synthref-tiny"])
def test_the_shipped_folder_holds_no_machine_paths_and_the_engines_metric_names(name):
    folder = WEIGHTS_DIR / name
    if not has_model(folder):
        pytest.skip("no shipped model in this build")
    config = load_config(folder / "config.yaml")
    assert (config.data.format, config.data.root) == ("synth", "data/synthref")
    record_text = (folder / "metrics.json").read_text()
    assert not re.search(r'"/|/tmp/|/root/|/home/', record_text)
    record = json.loads(record_text)
    assert {"acc50", "acc75", "miou", "count"} <= set(record["sample"]) and "acc@0.5" not in record_text
    assert record["run_val"]["acc50"] > 80  # what docs report for the shipped model's val


@needs_shipped
def test_predictor_and_predict_accept_the_shipped_name(tmp_path):
    from PIL import Image

    from lgrnet.inference.predictor import Predictor

    predictor = Predictor.from_pretrained("synthref", device="cpu")
    assert predictor.config.name == "synthref-small"
    image = tmp_path / "scene.png"
    Image.new("RGB", (96, 64), (200, 200, 200)).save(image)
    code, out, err = _cli(["predict", "--checkpoint", "synthref", "--image", str(image), "--text", "the red circle",
                           "--json", "--device", "cpu"])
    assert code == 0, err
    assert len(json.loads(out)["box_xyxy"]) == 4


# --------------------------------------------------------------------------------------------------------------
# lgrnet eval with the shipped model


@pytest.fixture(scope="module")
def synthref_cwd(tmp_path_factory) -> Path:
    """A working folder holding data/synthref as `lgrnet synth --out data/synthref --num-train 0` writes it (here
    with 4 expressions per split)."""
    from lgrnet.synth import ensure_synthref

    cwd = tmp_path_factory.mktemp("user")
    ensure_synthref(cwd / "data" / "synthref", seed=0, num_train=0, num_val=4, num_test=4, workers=1)
    return cwd


def _eval(args: list[str]) -> tuple[int, dict | None, str]:
    code, out, err = _cli(["eval", "--device", "cpu", *args])
    return code, json.loads(out) if code == 0 else None, err


@needs_shipped
def test_eval_without_data_needs_the_models_data_or_says_to_pass_data(tmp_path, synthref_cwd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/synthref here
    code, _, err = _eval(["--checkpoint", "synthref"])
    line = _one_line_error(err, "eval")
    assert code == 2 and "--checkpoint synthref: its data (synth at data/synthref) is not here; pass --data" in line
    assert "lgrnet synth --out data/synthref --num-train 0" in line
    monkeypatch.chdir(synthref_cwd)  # after that command: the model's own data config works
    code, result, err = _eval(["--checkpoint", "synthref"])
    assert code == 0, err
    assert (result["split"], result["count"], result["root"]) == ("val", 4, "data/synthref")


@needs_shipped
def test_a_single_jsonl_file_is_a_split_of_its_own(synthref_cwd, tmp_path, monkeypatch):
    monkeypatch.chdir(synthref_cwd)
    code, whole, err = _eval(["--checkpoint", "synthref", "--data", "data/synthref/testB.jsonl"])
    assert code == 0, err
    assert (whole["split"], whole["count"]) == ("testB", 4)
    code, split, err = _eval(["--checkpoint", "synthref", "--data", "synth:data/synthref", "--split", "testB"])
    assert code == 0, err
    assert (whole["acc50"], whole["miou"]) == (split["acc50"], split["miou"])  # the same four expressions
    code, _, err = _eval(["--checkpoint", "synthref", "--data", "data/synthref/testB.jsonl", "--split", "val"])
    line = _one_line_error(err, "eval")
    assert code == 2 and "--split val: data/synthref/testB.jsonl has no records of split 'val'" in line
    assert "its records are of split 'testB'" in line and "leave out --split" in line
    # A file holding several splits: --split picks its lines, without --split all of them count.
    mixed = tmp_path / "mixed.jsonl"
    base = Path("data/synthref").resolve()
    lines = []
    for name in ("val", "testB"):
        for row in (base / f"{name}.jsonl").read_text().splitlines():
            obj = json.loads(row)
            obj["image"] = str(base / obj["image"])
            lines.append(json.dumps(obj))
    mixed.write_text("\n".join(lines) + "\n")
    assert _eval(["--checkpoint", "synthref", "--data", str(mixed)])[1]["count"] == 8
    assert _eval(["--checkpoint", "synthref", "--data", str(mixed), "--split", "testB"])[1]["acc50"] == whole["acc50"]


@needs_shipped
def test_eval_precision_spellings(synthref_cwd, monkeypatch):
    monkeypatch.chdir(synthref_cwd)
    args = ["--checkpoint", "synthref", "--data", "data/synthref/val.jsonl"]
    fp32, off = _eval([*args, "--precision", "fp32"])[1], _eval([*args, "--precision", "off"])[1]
    assert fp32 == off
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["eval", *args, "--precision", "int8"])
    assert info.value.code == 2 and "invalid choice: 'int8' (choose from 'fp32', 'bf16', 'fp16')" in err.getvalue()


@needs_shipped
def test_eval_output_is_checked_before_the_model_loads(synthref_cwd, tmp_path, monkeypatch):
    import lgrnet.model.io

    monkeypatch.chdir(synthref_cwd)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loaded = []
    real = lgrnet.model.io.load_model
    monkeypatch.setattr(lgrnet.model.io, "load_model", lambda *a, **k: loaded.append(1) or real(*a, **k))
    code, _, err = _eval(["--checkpoint", "synthref", "--output", str(blocker / "preds.jsonl")])
    line = _one_line_error(err, "eval")
    assert code == 2 and f"--output {blocker / 'preds.jsonl'}: {blocker} is a file, not a folder" in line
    code, _, err = _eval(["--checkpoint", "synthref", "--output", str(tmp_path)])
    assert code == 2 and "is a folder, expected a file name" in _one_line_error(err, "eval")
    assert loaded == []  # neither error waited for the model
    out = tmp_path / "new" / "preds.jsonl"
    code, result, err = _eval(["--checkpoint", "synthref", "--split", "testA", "--output", str(out)])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == result["count"] == 4 and loaded == [1]


# --------------------------------------------------------------------------------------------------------------
# The caveat a user sees with the shipped model's boxes


def test_caveat_names_the_shipped_model_only(tmp_path, monkeypatch):
    from lgrnet.model.registry import caveat_for

    monkeypatch.delenv(SHIPPED_MODEL_ENV, raising=False)
    assert "SynthRef" in caveat_for(SHIPPED) and "photographs" in caveat_for(SHIPPED)
    assert caveat_for(tmp_path) is None  # a model the user trained carries none
    monkeypatch.setenv(SHIPPED_MODEL_ENV, str(tmp_path))  # a SynthRef model from elsewhere stands in for synthref
    assert caveat_for(tmp_path) == caveat_for(SHIPPED)


@needs_shipped
def test_predict_with_the_shipped_model_says_it_knows_only_synthref(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.delenv(SHIPPED_MODEL_ENV, raising=False)
    image = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (120, 90, 60)).save(image)
    code, out, err = _cli(["predict", "--checkpoint", "synthref", "--image", str(image), "--text", "the red mug",
                           "--json"])
    assert code == 0, err
    record = json.loads(out)
    assert "SynthRef" in record["model_caveat"]
    assert "lgrnet predict: note:" in err and "photographs" in err
