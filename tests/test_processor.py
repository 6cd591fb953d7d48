"""Processor: image loading and letterboxing, tokenisation with a truncation flag, and canvas outputs mapped back to
original pixels. Expected values are worked out by hand in each test (spec 11.4: long side to S, rounded, centred)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lgrnet.data.batch import SampleMeta
from lgrnet.data.transforms import EvalTransform
from lgrnet.errors import DataError
from lgrnet.inference.processor import Letterbox, Processor

S = 128  # the tiny twin's canvas


@pytest.fixture(scope="module")
def processor() -> Processor:
    from tiny_configs import tiny_twin

    config = tiny_twin("lgrnet-swin-s")
    assert config.model.image_size == S and config.model.text.max_length == 40
    return Processor.from_config(config)


def _picture(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 255, size=(height, width, 3), dtype=np.uint8)


def test_a_300_by_150_image_is_letterboxed_to_the_canvas(processor):
    # Long side 300 -> 128: scale 128/300 on both axes, the short side 150 -> 64 rows, centred: (128 - 64) / 2 = 32
    # rows of padding above (and below), none left or right.
    out = processor(_picture(300, 150), "the red square")
    assert len(out) == 1 and out.truncated == [False]
    letterbox = out.letterboxes[0]
    assert letterbox.original_size == (300, 150) and letterbox.canvas_size == S
    assert letterbox.scale == pytest.approx((128 / 300, 64 / 150), abs=1e-12)
    assert letterbox.offset == (0, 32)
    batch = out.batch
    assert batch.images.shape == (1, 3, S, S) and batch.image_mask.shape == (1, S, S)
    assert batch.boxes is None
    mask = batch.image_mask[0]
    assert mask[:32].all() and mask[96:].all() and not mask[32:96].any()
    assert (batch.images[0][:, :32] == 0).all() and (batch.images[0][:, 96:] == 0).all()
    meta = batch.meta[0]
    assert (meta.expression, meta.original_size, meta.scale, meta.offset) == (
        "the red square", (300, 150), letterbox.scale, letterbox.offset)


def test_tokens_and_the_truncation_flag(processor):
    # "the", "red", "square" are one word piece each: [CLS] + 3 + [SEP] real tokens, padded to max_length 40.
    out = processor(_picture(20, 20), "The Red SQUARE")
    assert out.batch.input_ids.shape == (1, 40) and out.batch.input_ids.dtype == torch.int64
    assert out.batch.attention_mask[0].tolist() == [1] * 5 + [0] * 35
    assert processor.tokenizer.convert_ids_to_tokens(out.batch.input_ids[0, :5].tolist()) == [
        "[CLS]", "the", "red", "square", "[SEP]"]
    # 38 pieces + 2 special tokens fit in 40; 39 do not: the tail is dropped and the sample says so.
    fits = processor(_picture(20, 20), "square " * 38)
    cut = processor(_picture(20, 20), "square " * 39)
    assert fits.truncated == [False] and cut.truncated == [True]
    assert int(cut.batch.attention_mask.sum()) == 40


def test_canvas_box_and_point_map_back_to_original_pixels(processor):
    letterbox = processor(_picture(300, 150), "x").letterboxes[0]
    sx, sy, dx, dy = 128 / 300, 64 / 150, 0, 32

    def back(x: float, y: float) -> tuple[float, float]:  # canvas = original * scale + offset, inverted
        return (x - dx) / sx, (y - dy) / sy

    # Canvas box (cx, cy, w, h) = (0.5, 0.5, 0.25, 0.5) / S: corners x 48 and 80, y 32 and 96 canvas pixels.
    # Point (0.25, 0.75) / S: (32, 96) canvas pixels.
    boxes, points = processor.post_process(torch.tensor([[0.5, 0.5, 0.25, 0.5]]), [letterbox],
                                           torch.tensor([[0.25, 0.75]]))
    assert boxes[0].tolist() == pytest.approx([*back(48, 32), *back(80, 96)], abs=1e-4)
    assert boxes[0].tolist() == pytest.approx([112.5, 0.0, 187.5, 150.0], abs=1e-4)
    assert points[0].tolist() == pytest.approx(back(32, 96), abs=1e-9)
    # Outside the image: the box is first clamped to the canvas, then everything to the image.
    boxes, points = processor.post_process(torch.tensor([[0.5, 0.5, 1.5, 1.5]]), [letterbox],
                                           torch.tensor([[0.5, 0.1]]))  # canvas y 12.8: in the top padding
    assert boxes[0].tolist() == pytest.approx([0.0, 0.0, 300.0, 150.0], abs=1e-4)
    assert points[0].tolist() == pytest.approx([back(64, 0)[0], 0.0], abs=1e-9)
    assert processor.post_process(torch.tensor([[0.5, 0.5, 0.1, 0.1]]), [letterbox]).points is None


def test_post_process_takes_the_batch_metas_and_each_sample_its_own_letterbox(processor):
    out = processor([_picture(300, 150), _picture(150, 300)], ["a", "b"])
    # 150 x 300 is the first image turned: padding left and right, (128 - 64) / 2 = 32 columns.
    assert out.letterboxes[1].offset == (32, 0)
    canvas = torch.tensor([[0.5, 0.5, 0.25, 0.5], [0.5, 0.5, 0.5, 0.25]])
    by_letterbox = processor.post_process(canvas, out.letterboxes)
    by_meta = processor.post_process(canvas, out.batch.meta)
    assert torch.equal(by_letterbox.boxes, by_meta.boxes)
    assert by_letterbox.boxes.flatten().tolist() == pytest.approx([112.5, 0.0, 187.5, 150.0, 0.0, 112.5, 150.0, 187.5],
                                                                  abs=1e-4)


def test_the_letterbox_is_the_evaluation_transform_without_a_box():
    image = Image.fromarray(_picture(300, 150))
    boxed = EvalTransform(S)(image, "x", (10.0, 20.0, 30.0, 40.0))
    boxless = EvalTransform(S)(image, "x")
    assert boxless.box is None
    assert torch.equal(boxed.image, boxless.image) and torch.equal(boxed.mask, boxless.mask)
    assert (boxed.scale, boxed.offset, boxed.original_size) == (boxless.scale, boxless.offset, boxless.original_size)
    letterbox = Letterbox(boxless.original_size, boxless.scale, boxless.offset, S)
    meta = SampleMeta("", "x", "", boxless.original_size, boxless.scale, boxless.offset, S)
    assert letterbox.canvas_to_original_xy(64.0, 64.0) == pytest.approx((150.0, 75.0), abs=1e-9)
    assert (letterbox.original_size, letterbox.scale, letterbox.offset) == (meta.original_size, meta.scale,
                                                                            meta.offset)


def test_one_image_several_expressions_and_inputs_that_do_not_match(processor, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(_picture(90, 60)).save(path)
    out = processor(path, ["the left one", "the right one"])
    assert len(out) == 2 and torch.equal(out.batch.images[0], out.batch.images[1])
    assert [m.expression for m in out.batch.meta] == ["the left one", "the right one"]
    assert out.batch.meta[0].image == str(path)
    with pytest.raises(DataError, match="one per expression"):
        processor([path, path, path], ["a", "b"])
    with pytest.raises(DataError, match="expression: empty"):
        processor(path, "   ")
    with pytest.raises(DataError, match="no word"):
        processor(path, "\u200b")


def test_a_bad_image_is_a_one_line_error_naming_it(processor, tmp_path):
    bad = tmp_path / "holiday-photo.jpg"
    bad.write_text("this is text, not a JPEG\n" * 10)
    for call in (lambda: processor(bad, "the dog"), lambda: processor.load_image(bad)):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "holiday-photo.jpg" in message and "\n" not in message
    with pytest.raises(DataError, match="missing.png: no such file"):
        processor.load_image(tmp_path / "missing.png")


def test_pixel_limit_is_checked_from_the_header_and_the_file_opened_once(processor, tmp_path, monkeypatch):
    small = Processor(S, processor.tokenizer, 40, max_image_pixels=10_000)
    path = tmp_path / "wide.png"
    Image.fromarray(_picture(300, 150)).save(path)
    with pytest.raises(DataError, match=r"300x150 is 45,000 pixels, above the limit of 10,000"):
        small.load_image(path)
    with pytest.raises(DataError, match=r"45,000 pixels"):
        small.load_image(_picture(300, 150))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    image = processor.load_image(path)
    assert image.size == (300, 150) and image.mode == "RGB"
    assert len(opened) == 1
