"""Visualisation: box/point/ground-truth overlay, attention maps put back on the original image (letterbox undone),
word-piece merging, the composite figure and PNG output. Predictions are built by hand so every pixel is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lgrnet.errors import LGRNetError
from lgrnet.inference.attention import attention_on_image, merge_word_pieces, split_visual_attention
from lgrnet.inference.predictor import Prediction
from lgrnet.inference.processor import Letterbox
from lgrnet.inference.visualize import (
    GT_COLOR,
    POINT_COLOR,
    PRED_COLOR,
    colormap,
    draw_prediction,
    render_figure,
    save_image,
    save_png,
)


def _letterbox(width: int, height: int, canvas: int = 64) -> Letterbox:
    """The eval letterbox (long side to the canvas, centred), as lgrnet.data.transforms.EvalTransform builds it."""
    r = canvas / max(width, height)
    w, h = max(1, round(width * r)), max(1, round(height * r))
    return Letterbox((width, height), (w / width, h / height), ((canvas - w) // 2, (canvas - h) // 2), canvas)


def _prediction(width=200, height=100, box=(20.0, 30.0, 120.0, 80.0), coord_xy=(70.0, 55.0), levels=None,
                words=None) -> Prediction:
    tokens = ["[CLS]", "the", "play", "##ground", "swing", "[SEP]"]
    return Prediction(
        expression="the playground swing",
        image_size=(width, height),
        box_xyxy=box,
        box_normalized=(box[0] / width, box[1] / height, box[2] / width, box[3] / height),
        coord=(coord_xy[0] / width, coord_xy[1] / height),
        coord_xy=coord_xy,
        letterbox=_letterbox(width, height),
        visual_attention=levels,
        word_attention=words,
        tokens=tokens if words is not None else None,
    )


def test_colormap_endpoints_and_shape():
    colours = colormap(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]]))
    assert colours.shape == (1, 5, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == (0, 0, 110) and tuple(colours[0, 2]) == (220, 20, 0)
    assert tuple(colours[0, 3]) == tuple(colours[0, 2]) and tuple(colours[0, 4]) == tuple(colours[0, 0])


def test_draw_prediction_pixels():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    p = _prediction()
    out = draw_prediction(image, p, ground_truth=(10, 10, 190, 90), caption=False)
    assert out.size == (200, 100)
    px = out.load()
    assert px[20, 50] == PRED_COLOR and px[120, 60] == PRED_COLOR  # left and right edges of the box
    assert px[70, 55] == POINT_COLOR  # the coordinate point
    assert px[12, 10] == GT_COLOR  # the dashed ground truth starts with a dash at its top-left corner
    assert px[150, 50] == (128, 128, 128)  # untouched elsewhere
    captioned = draw_prediction(image, p)
    assert captioned.width == 200 and captioned.height > 100
    with pytest.raises(ValueError, match="prediction was made"):
        draw_prediction(Image.new("RGB", (10, 10)), p)


def test_split_visual_attention_order():
    import torch

    weights = torch.arange(16 + 4, dtype=torch.float32)
    grids = split_visual_attention(weights, [(4, 4), (2, 2)])
    assert grids[0].shape == (4, 4) and grids[1].shape == (2, 2)
    assert grids[0][0, 1] == 1 and grids[0][1, 0] == 4 and grids[1][1, 1] == 19  # row-major, H/32 map first
    with pytest.raises(ValueError, match="token shapes"):
        split_visual_attention(weights, [(4, 4)])


def test_attention_map_lands_on_the_right_part_of_the_original_image():
    # A 200 x 100 image on a 64 canvas: 64 x 32 at offset (0, 16). All attention on the fine-grid token in row 3,
    # column 0 (canvas rows 48..64: below the image) must not show, so put it on row 1, column 3 (canvas x 48..64,
    # y 16..32 = original x 150..200, y 0..50: the top-right quarter).
    fine = np.zeros((4, 4), np.float32)
    fine[1, 3] = 1.0
    letterbox = _letterbox(200, 100)
    heat = attention_on_image([fine, np.zeros((2, 2), np.float32)], letterbox)
    assert heat.shape == (100, 200)
    assert heat[:50, 150:].mean() > 0.5 and heat[60:, :100].max() < 0.05
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert x >= 150 and y < 50
    # Coarse tokens cover 4x the area: equal weight on one coarse token gives a quarter of the density.
    coarse = np.zeros((2, 2), np.float32)
    coarse[0, 0] = 1.0
    both = attention_on_image([fine, coarse], letterbox, normalize=False)
    fine_only = attention_on_image([fine, np.zeros((2, 2), np.float32)], letterbox, normalize=False)
    assert both.max() == pytest.approx(fine_only.max(), rel=1e-5)


def test_attention_map_degenerate_images():
    grids = [np.random.default_rng(0).random((4, 4)).astype(np.float32), np.ones((2, 2), np.float32)]
    for size in [(1, 1), (4000, 2), (2, 4000)]:
        assert attention_on_image(grids, _letterbox(*size)).shape == (size[1], size[0])


def test_merge_word_pieces():
    tokens = ["[CLS]", "the", "play", "##ground", "swing", "[SEP]"]
    merged = merge_word_pieces(tokens, np.array([0.5, 0.1, 0.1, 0.05, 0.2, 0.05]))
    assert [w for w, _ in merged] == ["the", "playground", "swing"]
    assert merged[1][1] == pytest.approx(0.15)


def test_render_figure_with_attention_and_png(tmp_path):
    rng = np.random.default_rng(1)
    levels = [[rng.random((4, 4)).astype(np.float32), rng.random((2, 2)).astype(np.float32)] for _ in range(3)]
    words = [rng.random(6).astype(np.float32) for _ in range(3)]
    p = _prediction(levels=levels, words=words)
    image = Image.new("RGB", (200, 100), (90, 160, 90))
    plain = render_figure(image, _prediction(), tile_height=100)
    full = render_figure(image, p, tile_height=100)
    subset = render_figure(image, p, layers=[-1], tile_height=100)
    assert full.width > subset.width > plain.width  # one tile per chosen layer
    assert full.height > plain.height  # word-attention rows
    with pytest.raises(ValueError, match="layer 5"):
        render_figure(image, p, layers=[5])
    path = save_png(full, tmp_path / "sub" / "figure.png")
    again = Image.open(path)
    assert again.format == "PNG" and again.size == full.size


@pytest.mark.parametrize("name, fmt, magic", [("a.png", "PNG", b"\x89PNG\r\n"), ("b.jpg", "JPEG", b"\xff\xd8\xff"),
                                              ("c.JPEG", "JPEG", b"\xff\xd8\xff")])
def test_save_image_writes_the_format_its_suffix_names(tmp_path, name, fmt, magic):
    image = Image.new("RGB", (30, 20), PRED_COLOR)
    path = save_image(image, tmp_path / "sub" / name)
    assert path.read_bytes()[: len(magic)] == magic
    again = Image.open(path)
    assert again.format == fmt and again.size == (30, 20)
    assert max(abs(a - b) for a, b in zip(again.convert("RGB").getpixel((15, 10)), PRED_COLOR)) <= 3


@pytest.mark.parametrize("name", ["x.gif", "x.webp", "x"])
def test_save_image_rejects_other_suffixes(tmp_path, name):
    with pytest.raises(LGRNetError, match="unknown image suffix"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_draw_prediction_keeps_the_image_size():
    image = Image.new("RGB", (640, 480), (200, 200, 200))
    p = _prediction(640, 480, box=(100.0, 50.0, 300.0, 200.0), coord_xy=(200.0, 125.0))
    assert draw_prediction(image, p, caption=False).size == (640, 480)
    captioned = draw_prediction(image, p)
    assert captioned.width == 640 and captioned.height > 480  # the caption band goes under the full-size image


def test_captions_with_any_text():
    image = Image.new("RGB", (60, 40))
    for text in ["🐱 chat à gauche 左边", "x" * 5000, "word " * 400]:
        p = _prediction(60, 40, box=(1.0, 1.0, 30.0, 30.0), coord_xy=(10.0, 10.0))
        p.expression = text
        out = render_figure(image, p, tile_height=80)
        assert out.height < 400  # long captions are wrapped and cut, not unbounded
