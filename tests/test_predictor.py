"""Predictor: loading, input types, batching, typed results, attention, dtype/device, and the round trip against
the engine's evaluation (train briefly -> save -> Predictor.from_pretrained -> same boxes in original pixels)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from inference_helpers import REAL_SMOKE
from PIL import Image

from lgrnet.errors import CheckpointError, DataError, LGRNetError
from lgrnet.inference.predictor import Prediction, Predictor


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, size=(60, 90, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(array).save(path)
    return path


def _close(a: Prediction, b: Prediction, atol: float = 1e-3) -> bool:
    return np.allclose(a.box_xyxy, b.box_xyxy, atol=atol) and np.allclose(a.coord, b.coord, atol=atol)


def _letterbox(width: int, height: int, size: int) -> tuple[float, float, int, int]:
    """Spec 11.4 written out: long side to ``size`` (rounded), centred: (sx, sy, dx, dy), canvas = orig * s + d."""
    r = size / max(width, height)
    new_w, new_h = round(width * r), round(height * r)
    return new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2


def _expected_outputs(pred_box, coord, width: int, height: int, size: int):
    """The predictor's box (the canvas box clamped to [0, 1]) and coordinate, mapped to original pixels by the
    letterbox's inverse and clamped to the image."""
    sx, sy, dx, dy = _letterbox(width, height, size)
    cx, cy, w, h = (min(max(float(v), 0.0), 1.0) for v in pred_box)
    corners = [(cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size]
    box = [(corners[0] - dx) / sx, (corners[1] - dy) / sy, (corners[2] - dx) / sx, (corners[3] - dy) / sy]
    box = [min(max(v, 0.0), float(width if i % 2 == 0 else height)) for i, v in enumerate(box)]
    px, py = (float(coord[0]) * size - dx) / sx, (float(coord[1]) * size - dy) / sy
    return box, (min(max(px, 0.0), float(width)), min(max(py, 0.0), float(height)))


class _Captured:
    """Forward hook keeping the model's last canvas outputs (pred_boxes, coord)."""

    def __init__(self, model: torch.nn.Module):
        self.out = None
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.out = output


class _FixedOutputs(torch.nn.Module):
    """Stands in for the network: returns the given canvas box (cx, cy, w, h) / S and coordinate (x, y) / S."""

    def __init__(self, box, coord):
        super().__init__()
        self.box, self.coord = torch.tensor([box]), torch.tensor([coord])

    def forward(self, images, image_mask, input_ids, attention_mask, output_attentions=False):
        b = images.shape[0]
        return SimpleNamespace(pred_boxes=self.box.expand(b, 4), coord=self.coord.expand(b, 2))


@pytest.mark.parametrize(
    ("width", "height", "box", "coord"),
    [
        # 90 x 60 at S = 128: scale (128/90, 85/60), offsets (0, 21).
        (90, 60, (48 * 90 / 128, (51.2 - 21) * 60 / 85, 80 * 90 / 128, (76.8 - 21) * 60 / 85),
         (38.4 * 90 / 128, (57.6 - 21) * 60 / 85)),
        # 60 x 90: scale (85/60, 128/90), offsets (21, 0).
        (60, 90, ((48 - 21) * 60 / 85, 51.2 * 90 / 128, (80 - 21) * 60 / 85, 76.8 * 90 / 128),
         ((38.4 - 21) * 60 / 85, 57.6 * 90 / 128)),
    ],
)
def test_canvas_outputs_map_back_to_original_pixels(predictor, width, height, box, coord):
    """Hand-computed inverse letterbox on non-square images whose x and y offsets differ. Canvas box (0.5, 0.5,
    0.25, 0.2) -> corners x 48, 80 and y 51.2, 76.8 canvas pixels; coordinate (0.3, 0.45) -> (38.4, 57.6).
    90 x 60: x = X * 90/128, y = (Y - 21) * 60/85. 60 x 90: x = (X - 21) * 60/85, y = Y * 90/128."""
    assert predictor.image_size == 128
    fixed = Predictor(_FixedOutputs((0.5, 0.5, 0.25, 0.2), (0.3, 0.45)), predictor.config, device="cpu",
                      tokenizer=predictor.tokenizer)
    p = fixed.predict(np.zeros((height, width, 3), np.uint8), "anything")
    assert p.image_size == (width, height)
    assert p.box_xyxy == pytest.approx(box, abs=1e-4)
    assert p.coord_xy == pytest.approx(coord, abs=1e-4)
    assert p.box_normalized == pytest.approx((box[0] / width, box[1] / height, box[2] / width, box[3] / height))
    assert p.coord == pytest.approx((coord[0] / width, coord[1] / height))


def test_canvas_outputs_in_the_padding_are_clamped_to_the_image(predictor):
    # 90 x 60: the image covers canvas rows 21..106. A point at canvas y 0.05 * 128 = 6.4 lies in the top padding
    # (original y = (6.4 - 21) * 60/85 < 0) and a box over the whole canvas covers the whole image.
    fixed = Predictor(_FixedOutputs((0.5, 0.5, 1.0, 1.0), (0.95, 0.05)), predictor.config, device="cpu",
                      tokenizer=predictor.tokenizer)
    p = fixed.predict(np.zeros((60, 90, 3), np.uint8), "anything")
    assert p.box_xyxy == pytest.approx((0.0, 0.0, 90.0, 60.0), abs=1e-4)
    assert p.coord_xy == pytest.approx((0.95 * 90, 0.0), abs=1e-4)


def test_public_export_and_repr(predictor):
    import lgrnet

    assert lgrnet.Predictor is Predictor
    assert "device=cpu" in repr(predictor) and "fp32" in repr(predictor)


def test_prediction_fields_are_consistent(predictor, image_path):
    captured = _Captured(predictor.model)
    try:
        p = predictor.predict(image_path, "the bright square")
    finally:
        captured.handle.remove()
    assert isinstance(p, Prediction)
    w, h = p.image_size
    assert (w, h) == (90, 60)
    # The model's own canvas outputs through the letterbox's inverse (written out above), clamped to the image.
    box, point = _expected_outputs(captured.out.pred_boxes[0], captured.out.coord[0], w, h, predictor.image_size)
    assert p.box_xyxy == pytest.approx(box, abs=1e-4)
    assert p.coord_xy == pytest.approx(point, abs=1e-4)
    x1, y1, x2, y2 = p.box_xyxy
    assert np.allclose(p.box_normalized, (x1 / w, y1 / h, x2 / w, y2 / h))
    assert np.allclose(p.coord, (p.coord_xy[0] / w, p.coord_xy[1] / h))
    assert p.visual_attention is None and p.word_attention is None
    d = p.to_dict()
    json.dumps(d)  # JSON-ready
    assert set(d) >= {"box_xyxy", "coord", "box_normalized", "image_size"}


def test_path_pil_and_array_inputs_agree(predictor, image_path):
    by_path = predictor.predict(image_path, "the bright square")
    pil = Image.open(image_path)
    by_pil = predictor.predict(pil, "the bright square")
    by_array = predictor.predict(np.asarray(pil.convert("RGB")), "the bright square")
    by_float = predictor.predict(np.asarray(pil.convert("RGB")).astype(np.float32) / 255.0, "the bright square")
    assert _close(by_path, by_pil, 1e-5) and _close(by_path, by_array, 1e-5)
    assert _close(by_path, by_float, 1e-3)


def test_expression_list_and_pairs_match_single_predictions(predictor, image_path):
    texts = ["the bright square", "the dark corner on the left", "everything"]
    singles = [predictor.predict(image_path, t) for t in texts]
    many = predictor.predict(image_path, texts)
    assert [p.expression for p in many] == texts
    assert all(_close(a, b, 1e-4) for a, b in zip(singles, many))
    other = np.zeros((30, 30, 3), dtype=np.uint8)
    pairs = [(image_path, texts[0]), (other, texts[1]), (image_path, texts[2])]
    batched = predictor.predict(pairs, batch_size=2)
    assert batched[1].image_size == (30, 30)
    assert _close(batched[0], singles[0], 1e-4) and _close(batched[2], singles[2], 1e-4)
    # Different expressions really change the answer (the text is used at all).
    assert not _close(singles[0], singles[1], 1e-6)


def test_predict_many_isolates_failures(predictor, image_path, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    results = predictor.predict_many([(image_path, "a"), (bad, "b"), (image_path, "  "), (image_path, "c")])
    assert isinstance(results[0], Prediction) and isinstance(results[3], Prediction)
    assert isinstance(results[1], DataError) and "bad.jpg" in str(results[1])
    assert isinstance(results[2], DataError) and "empty" in str(results[2])
    with pytest.raises(DataError, match="bad.jpg"):
        predictor.predict([(image_path, "a"), (bad, "b")])


def test_attention_on_request(predictor, image_path):
    p = predictor.predict(image_path, "the bright square on the left", attention=True)
    layers = predictor.config.model.num_layers
    assert p.num_layers == layers and len(p.word_attention) == layers
    shapes = [tuple(s) for s in predictor.model.token_shapes]
    for level_maps in p.visual_attention:
        assert [m.shape for m in level_maps] == shapes
        assert all(np.isfinite(m).all() and (m >= 0).all() for m in level_maps)
    assert p.tokens[0] == "[CLS]" and p.tokens[-1] == "[SEP]"
    assert len(p.word_attention[0]) == len(p.tokens)
    assert [w for w, _ in p.words()] == ["the", "bright", "square", "on", "the", "left"]
    heat = p.attention_map(layer=0)
    assert heat.shape == (60, 90) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    d = p.to_dict(attention=True)
    assert len(d["visual_attention"]) == layers and len(d["word_attention"][0]) == 6
    no_attention = predictor.predict(image_path, "the bright square")
    with pytest.raises(LGRNetError, match="attention=True"):
        no_attention.attention_map()


def test_long_expression_is_truncated_and_flagged(predictor, image_path):
    p = predictor.predict(image_path, "the bright square " * 100)
    assert p.expression_truncated
    assert not predictor.predict(image_path, "the bright square").expression_truncated


def _linear_output_dtypes(p: Predictor, image_path) -> set[torch.dtype]:
    """The dtypes the model's Linear layers compute in during one prediction."""
    dtypes: set[torch.dtype] = set()
    handles = [m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
               for m in p.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        p.predict(image_path, "the square")
    finally:
        for handle in handles:
            handle.remove()
    return dtypes


def test_bf16_autocast_and_dtype_errors(checkpoint, predictor, image_path):
    bf16 = Predictor.from_pretrained(checkpoint, device="cpu", dtype="bf16")
    # The matmuls really run in bf16 (fp32 without a dtype), while the weights stay fp32.
    assert _linear_output_dtypes(bf16, image_path) == {torch.bfloat16}
    assert _linear_output_dtypes(predictor, image_path) == {torch.float32}
    assert all(param.dtype == torch.float32 for param in bf16.model.parameters())
    a, b = predictor.predict(image_path, "the square"), bf16.predict(image_path, "the square")
    # bf16 changes the digits but not the answer: within 1.5 px on a 90 x 60 image (measured 0.13-0.22 px).
    assert a.box_xyxy != b.box_xyxy
    assert np.allclose(a.box_xyxy, b.box_xyxy, atol=1.5)
    with pytest.raises(LGRNetError, match="fp16"):
        Predictor.from_pretrained(checkpoint, device="cpu", dtype="fp16")
    with pytest.raises(LGRNetError, match="dtype"):
        Predictor.from_pretrained(checkpoint, device="cpu", dtype="int8")


def test_device_choice(checkpoint, predictor, image_path):
    if torch.cuda.is_available():  # on a GPU machine: CUDA gives the CPU's answer (fp32, to float tolerance)
        cuda = Predictor.from_pretrained(checkpoint, device="cuda")
        assert _close(cuda.predict(image_path, "the square"), predictor.predict(image_path, "the square"), 1e-2)
    else:
        with pytest.raises(LGRNetError, match="CUDA is not available"):
            Predictor.from_pretrained(checkpoint, device="cuda")
    with pytest.raises(LGRNetError, match="expected cpu, cuda"):
        Predictor.from_pretrained(checkpoint, device="gpu0")


def test_checkpoint_errors(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="no-such-folder"):
        Predictor.from_pretrained(tmp_path / "no-such-folder")
    with pytest.raises(CheckpointError, match="neither a model folder"):
        Predictor.from_pretrained(tmp_path)
    # A hub id with no network (local cache only): one clear error, no traceback from the hub client.
    with pytest.raises(CheckpointError, match="lgrnet-test/does-not-exist"):
        Predictor.from_pretrained("lgrnet-test/does-not-exist", local_files_only=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((checkpoint / "config.yaml").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        Predictor.from_pretrained(broken)


def test_save_pretrained_and_training_output_folder(predictor, image_path, tmp_path):
    # ModelHubMixin.save_pretrained writes our model folder; a training output folder resolves to checkpoints/last.
    folder = tmp_path / "run" / "checkpoints" / "last"
    predictor.save_pretrained(folder)
    assert (folder / "config.yaml").is_file() and (folder / "model.safetensors").is_file()
    again = Predictor.from_pretrained(tmp_path / "run", device="cpu")
    assert _close(predictor.predict(image_path, "the square"), again.predict(image_path, "the square"), 1e-6)


def test_round_trip_matches_engine_evaluation(tmp_path):
    """Train the tiny twin briefly with the engine, then evaluate the engine's checkpoint with the engine and load
    it with ``Predictor.from_pretrained``: the boxes (original pixels) are the same for the same samples."""
    from tiny_configs import tiny_twin

    from lgrnet.engine.evaluate import evaluate_checkpoint
    from lgrnet.engine.train import train

    rows = [json.loads(line) for line in (REAL_SMOKE / "manifest.jsonl").read_text().splitlines() if line.strip()][:8]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image": str(REAL_SMOKE / r["image"]), "expression": r["expression"],
                                        "box": r["bbox_xyxy"], "id": str(r["id"])}) + "\n" for r in rows))
    config = tiny_twin("lgrnet-swin-s")
    config.data.format, config.data.root, config.data.num_workers = "jsonl", str(data), 0
    config.train.epochs, config.train.batch_size, config.train.max_steps = 1, 4, 2
    result = train(config, tmp_path / "run", device="cpu")
    assert result.step == 2 and (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()

    engine = evaluate_checkpoint(str(tmp_path / "run"), split="val", output=tmp_path / "engine.jsonl", device="cpu")
    engine_predictions = [json.loads(line) for line in (tmp_path / "engine.jsonl").read_text().splitlines()]
    assert engine["count"] == len(engine_predictions) == len(rows)

    predictor = Predictor.from_pretrained(tmp_path / "run", device="cpu", batch_size=3)  # a training output folder
    ours = predictor.predict([(REAL_SMOKE / r["image"], r["expression"]) for r in rows])
    trained = Predictor.from_pretrained(tmp_path / "run" / "checkpoints" / "last", device="cpu")
    for mine, theirs, row in zip(ours, engine_predictions, rows):
        assert theirs["expression"] == mine.expression == row["expression"]
        assert np.allclose(mine.box_xyxy, theirs["box"], atol=0.011), (mine.box_xyxy, theirs["box"])
    assert _close(trained.predict(REAL_SMOKE / rows[0]["image"], rows[0]["expression"]), ours[0], 1e-5)



@pytest.mark.parametrize("preset, overrides", [
    ("lgrnet-paper-swin-s", []),
    ("lgrnet-r101", []),
    ("lgrnet-swin-s", ["model.coord_embed=none", "model.num_pred_tokens=2"]),
])
def test_other_model_variants(preset, overrides):
    """Paper variant, ResNet extractor, no coordinate branch (the box centre stands in) with two prediction tokens."""
    from tiny_configs import tiny_twin

    from lgrnet.config import apply_overrides
    from lgrnet.model.lgrnet import LGRNet

    config = apply_overrides(tiny_twin(preset), overrides)
    torch.manual_seed(0)
    predictor = Predictor(LGRNet(config.model, config.loss), config, device="cpu")
    captured = _Captured(predictor.model)
    p = predictor.predict(np.full((50, 70, 3), 120, np.uint8), "the left thing", attention=True)
    captured.handle.remove()
    out = captured.out
    # Without a coordinate branch the (unclamped) canvas box centre stands in for the coordinate.
    coord = out.pred_boxes[0, :2] if config.model.coord_embed == "none" else out.coord[0]
    box, point = _expected_outputs(out.pred_boxes[0], coord, 70, 50, config.model.image_size)
    assert p.box_xyxy == pytest.approx(box, abs=1e-4) and p.coord_xy == pytest.approx(point, abs=1e-4)
    assert p.attention_map().shape == (50, 70) and [w for w, _ in p.words()] == ["the", "left", "thing"]
