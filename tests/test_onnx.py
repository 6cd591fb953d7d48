"""ONNX export (``lgrnet export onnx``) and the onnxruntime backend of the Predictor: the exported graph gives
PyTorch's boxes (within 1e-4, normalised) for the shipped model at batch 1 and a larger batch, for a tiny
Swin/QDA model and (boxes and scores) for a tiny model with the generalized head; the JSON beside it holds what the
processor needs; bad input is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import run_cli_captured
from inference_helpers import REAL_SMOKE, make_tiny_checkpoint
from model_helpers import build, make_inputs

from lgrnet.config import Config
from lgrnet.errors import CheckpointError, LGRNetError
from lgrnet.inference.predictor import Prediction, Predictor
from lgrnet.model.io import load_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lgrnet.inference.onnx import export_onnx, load_onnx  # noqa: E402  (after the skips)

TOLERANCE = 1e-4  # normalised box and coordinate units
REAL_IMAGES = sorted((REAL_SMOKE / "images").glob("*.jpg"))[:3]
EXPRESSIONS = ["the red circle", "a big blue square on the left", "man", "the small green triangle below it",
               "THE YELLOW STAR", "the " + "very " * 30 + "long expression"]


def _largest_difference(a: Prediction, b: Prediction) -> float:
    return float(np.abs(np.subtract(a.box_normalized + a.coord, b.box_normalized + b.coord)).max())


class _BatchSpy:
    """Stands in for an onnxruntime session and records the batch size of each run."""

    def __init__(self, session) -> None:
        self.session = session
        self.batch_sizes: list[int] = []

    def run(self, output_names, feeds):
        self.batch_sizes.append(int(feeds["images"].shape[0]))
        return self.session.run(output_names, feeds)


# ------------------------------------------------------------------------------------------------------------
# A tiny Swin model with query-dependent attention (QDA), exported by the command


@pytest.fixture(scope="module")
def swin_export(tmp_path_factory) -> tuple[torch.nn.Module, Config, SimpleNamespace]:
    root = tmp_path_factory.mktemp("onnx-swin")
    checkpoint = make_tiny_checkpoint(root / "checkpoint")  # the Swin twin of lgrnet-swin-s, random weights
    out = root / "swin.onnx"
    code, stdout, stderr = run_cli_captured(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert code == 0, stdout + stderr
    assert f"wrote {out}" in stdout and "checked: onnxruntime vs PyTorch" in stdout
    model, config = load_model(checkpoint)
    return model, config, SimpleNamespace(onnx_path=out, sidecar_path=root / "swin.json",
                                          tokenizer_dir=root / "swin.tokenizer")


def _graph_shapes(path: Path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}


def test_export_command_writes_graph_json_and_tokenizer(swin_export):
    _, config, written = swin_export
    size, length = config.model.image_size, config.model.text.max_length
    sidecar = json.loads(written.sidecar_path.read_text())
    assert sidecar["schema_version"] == 1 and sidecar["format"] == "lgrnet-onnx"
    assert sidecar["image_size"] == size and sidecar["max_length"] == length
    assert sidecar["lowercase"] is config.model.text.lowercase
    assert sidecar["mean"] == [0.485, 0.456, 0.406] and sidecar["std"] == [0.229, 0.224, 0.225]  # ImageNet's
    assert sidecar["tokenizer"] == {"name": config.model.text.name, "files": "swin.tokenizer"}
    assert (written.tokenizer_dir / "tokenizer.json").is_file()
    assert sidecar["caveat"] is None and sidecar["config"] == config.to_dict()
    shapes = _graph_shapes(written.onnx_path)
    batch = shapes["images"][0]
    assert isinstance(batch, str) and batch  # a named, dynamic batch axis shared by every input and output
    assert shapes == {"images": [batch, 3, size, size], "image_mask": [batch, size, size],
                      "input_ids": [batch, length], "attention_mask": [batch, length], "pred_boxes": [batch, 4],
                      "coord": [batch, 2]}


@pytest.mark.parametrize("batch", [1, 3])
def test_tiny_swin_qda_model_matches_pytorch(swin_export, batch):
    model, config, written = swin_export
    assert config.model.visual.kind == "swin" and config.model.visual.query_modulation
    assert config.model.visual.qda_channel_gate and config.model.visual.qda_spatial_gate
    inputs = make_inputs(config.model, batch=batch, length=config.model.text.max_length, seed=batch)
    args = (inputs["images"], inputs["image_mask"], inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        expected = model(*args)
    got = load_onnx(written.onnx_path).model(*args)
    assert got.pred_boxes.shape == (batch, 4) and got.coord.shape == (batch, 2)
    assert float((got.pred_boxes - expected.pred_boxes).abs().max()) <= TOLERANCE
    assert float((got.coord - expected.coord).abs().max()) <= TOLERANCE


def test_onnx_predictor_refuses_what_the_graph_cannot_do(swin_export, tmp_path):
    path = swin_export[2].onnx_path
    predictor = Predictor.from_pretrained(path, backend="onnxruntime")
    assert predictor.config.name == swin_export[1].name and predictor.caveat is None
    image = REAL_IMAGES[0]
    with pytest.raises(LGRNetError, match="attention"):
        predictor.predict(image, "the cat", attention=True)
    with pytest.raises(LGRNetError, match="dtype 'bf16'"):
        Predictor.from_pretrained(path, backend="onnxruntime", dtype="bf16")
    with pytest.raises(LGRNetError, match="backend 'tensorrt'"):
        Predictor.from_pretrained(path, backend="tensorrt")
    with pytest.raises(LGRNetError, match="no PyTorch weights"):
        predictor.save_pretrained(tmp_path / "saved")


def test_a_graph_without_its_json_or_from_a_newer_lgrnet_is_refused(swin_export, tmp_path):
    written = swin_export[2]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "swin.onnx").symlink_to(written.onnx_path)
    with pytest.raises(CheckpointError, match="missing swin.json"):
        load_onnx(lone / "swin.onnx")
    sidecar = json.loads(written.sidecar_path.read_text())
    (lone / "swin.json").write_text(json.dumps({**sidecar, "schema_version": 99}))
    with pytest.raises(CheckpointError, match="schema_version 99"):
        load_onnx(lone)  # the folder: its one .onnx file
    (lone / "other.onnx").symlink_to(written.onnx_path)
    with pytest.raises(CheckpointError, match="2 .onnx files"):
        load_onnx(lone)
    with pytest.raises(CheckpointError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")


def test_a_graph_without_the_outputs_its_config_calls_for_is_refused(swin_export, tmp_path):
    """A generalized head's config beside a graph that returns no token boxes and scores."""
    written = swin_export[2]
    (tmp_path / "swin.onnx").symlink_to(written.onnx_path)
    sidecar = json.loads(written.sidecar_path.read_text())
    sidecar["config"]["model"]["grec"]["enabled"] = True
    (tmp_path / "swin.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="lacks the output\\(s\\) token_boxes, token_logits"):
        load_onnx(tmp_path / "swin.onnx")


def test_export_checks_its_arguments_before_tracing(swin_export, tmp_path):
    model, config = swin_export[0], swin_export[1]
    with pytest.raises(LGRNetError, match="ending in .onnx"):
        export_onnx(model, config, tmp_path / "model.pt")
    with pytest.raises(LGRNetError, match="--dtype int8"):
        export_onnx(model, config, tmp_path / "model.onnx", dtype="int8")
    with pytest.raises(LGRNetError, match="--opset 11"):
        export_onnx(model, config, tmp_path / "model.onnx", opset=11)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fp16_export_keeps_float32_inputs_and_outputs(tmp_path):
    """fp16 weights (for GPU runtimes): the graph's interface stays float32 and its boxes (here from
    onnxruntime's CPU provider) are near the fp32 model's."""
    model, config = build("lgrnet-tiny")
    model.eval()
    inputs = make_inputs(config.model, batch=2, length=config.model.text.max_length)
    args = (inputs["images"], inputs["image_mask"], inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        expected = model(*args).pred_boxes
    written = export_onnx(model, config, tmp_path / "half.onnx", dtype="fp16", verify=False)
    with torch.no_grad():  # the model given is left in float32, its outputs bit-identical
        assert torch.equal(model(*args).pred_boxes, expected)
    proto = onnx.load(str(written.onnx_path))
    elements = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for weight in proto.graph.initializer:
        if weight.data_type in elements:
            elements[weight.data_type] += int(np.prod(weight.dims))
    # The weights are half precision; a few float32 constants the exporter computes (a sine table's 16
    # frequencies, scalars) may stay float32.
    assert elements[onnx.TensorProto.FLOAT] < 1e-3 * elements[onnx.TensorProto.FLOAT16]
    interface = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert interface["images"] == interface["pred_boxes"] == interface["coord"] == onnx.TensorProto.FLOAT
    assert json.loads(written.sidecar_path.read_text())["dtype"] == "fp16"
    got = load_onnx(written.onnx_path).model(*args).pred_boxes
    assert float((got - expected).abs().max()) <= 1e-2


def test_copied_export_runs_from_its_new_folder(swin_export, tmp_path):
    """The graph, its JSON and its tokenizer folder are all a deployment needs."""
    written = swin_export[2]
    for source in (written.onnx_path, written.sidecar_path):
        shutil.copy(source, tmp_path / source.name)
    shutil.copytree(written.tokenizer_dir, tmp_path / written.tokenizer_dir.name)
    predictor = Predictor.from_pretrained(tmp_path / "swin.onnx", backend="onnxruntime")
    reference = Predictor(swin_export[0], swin_export[1], device="cpu")
    expected = reference.predict(REAL_IMAGES[1], "the dog on the sofa")
    assert _largest_difference(expected, predictor.predict(REAL_IMAGES[1], "the dog on the sofa")) <= TOLERANCE


# ------------------------------------------------------------------------------------------------------------
# A tiny model with the generalized head (one more export: slow)


@pytest.fixture(scope="module")
def grec_export(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("onnx-grec")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", "lgrnet-tiny", overrides=["model.grec.enabled=true"])
    out = root / "grec.onnx"
    code, stdout, stderr = run_cli_captured(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert code == 0, stdout + stderr
    return checkpoint, out


@pytest.mark.slow
def test_generalized_head_gives_pytorchs_boxes_and_scores(grec_export):
    checkpoint, path = grec_export
    torch_predictor = Predictor.from_pretrained(checkpoint, device="cpu")
    onnx_predictor = Predictor.from_pretrained(path, backend="onnxruntime")
    grec = torch_predictor.config.model.grec
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert list(sidecar["outputs"]) == ["pred_boxes", "coord", "token_boxes", "token_logits"]
    shapes = _graph_shapes(path)
    batch = shapes["images"][0]
    assert shapes["token_boxes"] == [batch, grec.num_queries, 4] and shapes["token_logits"] == [batch, grec.num_queries]
    assert onnx_predictor.threshold == torch_predictor.threshold == grec.threshold
    pairs = [(REAL_IMAGES[i % len(REAL_IMAGES)], text) for i, text in enumerate(EXPRESSIONS[:3])]
    for threshold in (0.0, None):  # every token, then the model's own threshold
        expected = torch_predictor.predict(pairs, batch_size=len(pairs), threshold=threshold)
        got = onnx_predictor.predict(pairs, batch_size=len(pairs), threshold=threshold)
        for a, b in zip(expected, got):
            assert _largest_difference(a, b) <= TOLERANCE
            assert a.found == b.found and len(a.boxes) == len(b.boxes) and b.threshold == a.threshold
            if threshold == 0.0:
                assert len(b.boxes) == grec.num_queries
            np.testing.assert_allclose(b.scores, a.scores, atol=TOLERANCE)
            size = np.array(a.image_size * 2, dtype=np.float64)
            np.testing.assert_allclose(np.array(b.boxes).reshape(-1, 4) / size, np.array(a.boxes).reshape(-1, 4) / size,
                                       atol=TOLERANCE)


# ------------------------------------------------------------------------------------------------------------
# The shipped model (a 130 MB graph: slow)


@pytest.fixture(scope="module")
def shipped_predictors(tmp_path_factory) -> tuple[Predictor, Predictor]:
    out = tmp_path_factory.mktemp("onnx-shipped") / "synthref.onnx"
    code, stdout, stderr = run_cli_captured(["export", "onnx", "--checkpoint", "synthref", "--out", str(out)])
    assert code == 0, stdout + stderr
    return (Predictor.from_pretrained("synthref", device="cpu"),
            Predictor.from_pretrained(out, backend="onnxruntime"))


@pytest.mark.slow
def test_shipped_model_batch_of_one_matches_pytorch(shipped_predictors):
    torch_predictor, onnx_predictor = shipped_predictors
    spy = onnx_predictor.model.session = _BatchSpy(onnx_predictor.model.session)
    try:
        expected = torch_predictor.predict(REAL_IMAGES[0], EXPRESSIONS[0])
        got = onnx_predictor.predict(REAL_IMAGES[0], EXPRESSIONS[0])
    finally:
        onnx_predictor.model.session = spy.session
    assert spy.batch_sizes == [1]
    assert _largest_difference(expected, got) <= TOLERANCE
    assert got.image_size == expected.image_size and got.expression == expected.expression
    assert onnx_predictor.caveat == torch_predictor.caveat is not None  # the shipped model's caveat travels


@pytest.mark.slow
def test_shipped_model_larger_batch_matches_pytorch(shipped_predictors):
    torch_predictor, onnx_predictor = shipped_predictors
    pairs = [(REAL_IMAGES[i % len(REAL_IMAGES)], text) for i, text in enumerate(EXPRESSIONS)]
    spy = onnx_predictor.model.session = _BatchSpy(onnx_predictor.model.session)
    try:
        expected = torch_predictor.predict(pairs, batch_size=len(pairs))
        got = onnx_predictor.predict(pairs, batch_size=len(pairs))
    finally:
        onnx_predictor.model.session = spy.session
    assert spy.batch_sizes == [len(pairs)]
    assert [p.expression_truncated for p in got] == [False] * 5 + [True]
    for a, b in zip(expected, got):
        assert a.expression_truncated == b.expression_truncated
        assert _largest_difference(a, b) <= TOLERANCE
