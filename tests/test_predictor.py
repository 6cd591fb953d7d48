"""Predictor: loading, input types, batching, typed results, attention, dtype/device, and the round trip against
the engine's evaluation (train briefly -> save -> Predictor.from_pretrained -> same boxes in original pixels)."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_public_export_and_repr(predictor):
    import lgrnet

    assert lgrnet.Predictor is Predictor
    assert "device=cpu" in repr(predictor) and "fp32" in repr(predictor)


def test_prediction_fields_are_consistent(predictor, image_path):
    p = predictor.predict(image_path, "the bright square")
    assert isinstance(p, Prediction)
    w, h = p.image_size
    assert (w, h) == (90, 60)
    x1, y1, x2, y2 = p.box_xyxy
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    assert np.allclose(p.box_normalized, (x1 / w, y1 / h, x2 / w, y2 / h))
    assert np.allclose(p.coord, (p.coord_xy[0] / w, p.coord_xy[1] / h))
    assert all(0.0 <= v <= 1.0 for v in p.coord)
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


def test_bf16_autocast_and_dtype_errors(checkpoint, predictor, image_path):
    bf16 = Predictor.from_pretrained(checkpoint, device="cpu", dtype="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    a, b = predictor.predict(image_path, "the square"), bf16.predict(image_path, "the square")
    # bf16 keeps ~3 significant digits: same box to within a few pixels on a 90 x 60 image.
    assert np.allclose(a.box_xyxy, b.box_xyxy, atol=6.0)
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
    from lgrnet import tiny_twin
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
    from lgrnet import tiny_twin
    from lgrnet.config import apply_overrides
    from lgrnet.model.lgrnet import LGRNet

    config = apply_overrides(tiny_twin(preset), overrides)
    torch.manual_seed(0)
    predictor = Predictor(LGRNet(config.model, config.loss), config, device="cpu")
    p = predictor.predict(np.full((50, 70, 3), 120, np.uint8), "the left thing", attention=True)
    x1, y1, x2, y2 = p.box_xyxy
    assert 0 <= x1 <= x2 <= 70 and 0 <= y1 <= y2 <= 50
    assert p.attention_map().shape == (50, 70) and [w for w, _ in p.words()] == ["the", "left", "thing"]
    if config.model.coord_embed == "none":
        # The centre of the (unclamped) canvas box: inside the clamped box.
        assert x1 <= p.coord_xy[0] <= x2 and y1 <= p.coord_xy[1] <= y2
