"""Transforms: geometry of every train branch on a drawn rectangle, flip word swap, letterbox inverse, images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lgrnet.config import AugmentConfig
from lgrnet.data.image import load_image, to_rgb
from lgrnet.data.readers import read_transvg
from lgrnet.data.spatial import swap_left_right
from lgrnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    canvas_to_original,
)
from lgrnet.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BACKGROUND, FOREGROUND = (40, 60, 80), (250, 240, 20)


def _drawn(width=500, height=380, rect=(123.0, 71.0, 301.0, 260.0)):
    img = Image.new("RGB", (width, height), BACKGROUND)
    ImageDraw.Draw(img).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=FOREGROUND)
    return img, rect


def _found_box(sample):
    """Bounding box (x1, y1, x2, y2) of the drawn pixels in a transformed canvas (un-normalised)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = sample.image * std + mean  # [3, S, S] in [0, 1]
    # The foreground is far yellower (R+G-2B) than the background under any colour jitter/blur used here.
    yellow = rgb[0] + rgb[1] - 2 * rgb[2]
    on = (yellow > 0.6) & ~sample.mask
    ys, xs = torch.nonzero(on, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _iou(a, b):
    ix = (min(a[2], b[2]) - max(a[0], b[0])).clamp(min=0)
    iy = (min(a[3], b[3]) - max(a[1], b[1])).clamp(min=0)
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area)


def _xyxy(sample):
    cx, cy, w, h = (sample.box * sample.canvas_size).tolist()
    return torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


AUGMENTS = {
    "scale_only": AugmentConfig(crop=False, translate=False, color_jitter=0.0),
    "crop": AugmentConfig(crop=True, translate=True),
    "jitter_blur": AugmentConfig(crop=False, translate=True, blur=True),
    "flip": AugmentConfig(crop=True, translate=True, flip=True, blur=True),
    "tiny_canvas": AugmentConfig(scales=[128, 112, 96], crop=True, translate=True, flip=True),
}


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_train_box_covers_drawn_pixels(name):
    augment = AUGMENTS[name]
    size = 128 if name == "tiny_canvas" else 640
    transform = TrainTransform(size, augment)
    random.seed(0)
    torch.manual_seed(0)
    image, rect = _drawn()
    flipped = 0
    for i in range(12):
        sample = transform(image, "a yellow box", rect)
        assert sample.image.shape == (3, size, size) and sample.mask.shape == (size, size)
        assert sample.mask.dtype == torch.bool
        box = _xyxy(sample)
        assert _iou(box, _found_box(sample)) >= 0.9, (name, i)
        assert sample.box[2] > 0 and sample.box[3] > 0
        # The pad mask marks exactly the outside of the pasted image: one rectangle with zeros around it, which
        # (without a crop) the recorded map takes to the whole original image, no more, no less.
        inside = ~sample.mask
        assert torch.all(sample.image[:, sample.mask] == 0)
        assert torch.equal(inside, inside.any(1)[:, None] & inside.any(0)[None, :])
        if not augment.crop:
            assert _visible_window(sample) == pytest.approx((0, 0, *image.size), abs=1e-6)
        # Back to original pixels through the recorded affine map.
        back = canvas_to_original(sample.box[None], [sample])[0]
        if sample.scale[0] < 0:
            flipped += 1
        # A crop may clip the box, which then stays inside the drawn rectangle; otherwise it maps back exactly.
        assert back[0] >= rect[0] - 1 and back[1] >= rect[1] - 1 and back[2] <= rect[2] + 1 and back[3] <= rect[3] + 1
        assert _iou(back, torch.tensor(rect)) >= 0.5
    if augment.flip:
        assert 0 < flipped < 12


def _visible_window(sample):
    """The part of the original image the canvas shows, (x1, y1, x2, y2) original pixels: the unpadded canvas
    region (integer edges) through the inverse of the recorded map. The whole image unless a crop happened."""
    visible = ~sample.mask
    cols = torch.nonzero(visible.any(0)).flatten()
    rows = torch.nonzero(visible.any(1)).flatten()
    (sx, sy), (dx, dy) = sample.scale, sample.offset
    xa, xb = (int(cols[0]) - dx) / sx, (int(cols[-1]) + 1 - dx) / sx  # swapped after a flip (sx < 0)
    return min(xa, xb), (int(rows[0]) - dy) / sy, max(xa, xb), (int(rows[-1]) + 1 - dy) / sy


@pytest.mark.parametrize(
    ("width", "height", "rect"),
    [
        # Target far right of a wide image: a check of x against the crop's top never accepts a window here.
        (1200, 400, (1000.0, 300.0, 1100.0, 380.0)),
        # Wide target at the bottom left: a swapped check accepts windows that hold part of the box but not its
        # centre about half of the time.
        (800, 600, (0.0, 400.0, 100.0, 600.0)),
    ],
)
def test_crop_window_contains_the_box_centre(width, height, rect):
    """The reference compared the box centre x with the crop's top (spec 11.3, 15.18); the window here must hold
    the centre (x between its left and right edges, y between top and bottom) and leave a box of positive area.
    Crops are told from resizes by the visible window, which a multi-scale resize leaves the whole image."""
    transform = TrainTransform(128, AugmentConfig(crop=True, translate=True, color_jitter=0.0, scales=[128, 112, 96]))
    random.seed(1)
    image = Image.new("RGB", (width, height), BACKGROUND)
    cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
    crops = 0
    for i in range(20):
        sample = transform(image, "a yellow box", rect)
        x1, y1, x2, y2 = _visible_window(sample)
        if x1 > 0.5 or y1 > 0.5 or x2 < width - 0.5 or y2 < height - 0.5:
            crops += 1
            assert x1 <= cx <= x2 and y1 <= cy <= y2, (i, (x1, y1, x2, y2))
        else:
            assert (x1, y1, x2, y2) == pytest.approx((0, 0, width, height), abs=1e-6)
        # The target is the box clipped to the window, through canvas = original * scale + offset.
        clipped = (max(rect[0], x1), max(rect[1], y1), min(rect[2], x2), min(rect[3], y2))
        assert clipped[2] - clipped[0] > 1 and clipped[3] - clipped[1] > 1
        (sx, sy), (dx, dy) = sample.scale, sample.offset
        expected = [clipped[0] * sx + dx, clipped[1] * sy + dy, clipped[2] * sx + dx, clipped[3] * sy + dy]
        assert _xyxy(sample).tolist() == pytest.approx(expected, abs=1e-3)
    # Branch B is taken with probability 0.5 and a window holding the centre is found within 20 tries.
    assert crops >= 5


@pytest.mark.parametrize(("spatial_match", "cropped"), [("substring", False), ("word", True)])
def test_spatial_match_decides_which_expressions_are_cropped(spatial_match, cropped):
    # "the lefty" is spatial only under the reference's substring rule (the default): never cropped there.
    transform = TrainTransform(128, AugmentConfig(crop=True, translate=False, color_jitter=0.0, scales=[128]),
                               spatial_match)
    random.seed(4)
    image, rect = _drawn(width=1200, height=400, rect=(1000.0, 300.0, 1100.0, 380.0))
    windows = [_visible_window(transform(image, "the lefty", rect)) for _ in range(12)]
    crops = sum(w != pytest.approx((0, 0, 1200, 400), abs=1e-6) for w in windows)
    assert (crops > 0) is cropped


def test_flip_swaps_whole_words_and_box():
    transform = TrainTransform(640, AugmentConfig(crop=False, translate=False, color_jitter=0.0, flip=True,
                                                  scales=[640]))
    image, rect = _drawn()
    random.seed(3)
    seen = set()
    for _ in range(10):
        sample = transform(image, "Left of the bright Right one, leftmost", rect)
        seen.add(sample.expression)
        if sample.scale[0] < 0:
            assert sample.expression == "Right of the bright Left one, rightmost"
            x1, _, x2, _ = _xyxy(sample).tolist()
            assert x1 == pytest.approx(sample.offset[0] - rect[2] * 640 / 500, abs=1e-3)
            assert x2 - x1 == pytest.approx((rect[2] - rect[0]) * 640 / 500, abs=1e-3)
    assert seen == {"Left of the bright Right one, leftmost", "Right of the bright Left one, rightmost"}


def test_swap_words_whole_and_hyphenated():  # the rules themselves: tests/test_spatial.py
    assert swap_left_right("bright left-hand cup, RIGHT") == "bright right-hand cup, LEFT"
    assert swap_left_right("copyright") == "copyright"


def test_eval_transform_sub_pixel_and_inverse():
    transform = EvalTransform(640)
    image, rect = _drawn(width=333, height=500, rect=(10.25, 20.5, 200.75, 480.125))
    sample = transform(image, "x", rect)
    s = 640 / 500
    assert sample.scale == pytest.approx((round(333 * s) / 333, 1.0 * 640 / 500))
    w = round(333 * s)
    assert sample.offset == ((640 - w) // 2, 0)
    assert not sample.mask[:, (640 - w) // 2 : (640 - w) // 2 + w].any() and sample.mask[:, 0].all()
    expected = torch.tensor(rect) * torch.tensor([sample.scale[0], s, sample.scale[0], s])
    expected[0::2] += sample.offset[0]
    assert (_xyxy(sample)).tolist() == pytest.approx(expected.tolist(), abs=1e-3)
    back = canvas_to_original(sample.box[None], [sample])
    assert back[0].tolist() == pytest.approx(list(rect), abs=1e-3)


def test_real_smoke_eval_round_trip_within_one_pixel():
    root = SHARED / "real_smoke"
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    names = {Path(m["image"]).name for m in manifest}
    records = [r for ds, sp in sorted({(m["transvg_dataset"], m["split"]) for m in manifest})
               for r in read_transvg(SHARED / "transvg_splits", ds, sp, root / "images") if Path(r.image).name in names]
    assert len(records) == 30
    transform = EvalTransform(640)
    images = {}
    for r in records:
        image = images.setdefault(r.image, load_image(r.image))
        sample = transform(image, r.expression, r.box)
        assert max(image.size) * sample.scale[0] == pytest.approx(640, abs=0.5)
        back = canvas_to_original(sample.box[None], [sample])[0]
        assert back.tolist() == pytest.approx(list(r.box), abs=1.0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "I", "LA", "1", "F"])
def test_load_image_any_mode_to_rgb(tmp_path, mode):
    base = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(np.full((10, 20), 0.5, dtype=np.float32))
    else:
        img = base.convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257, not clipped to 255
    ext = "tiff" if mode in ("I;16", "I", "F", "CMYK") else "png"
    path = tmp_path / f"img.{ext}"
    img.save(path)
    assert load_image(path).mode == "RGB"


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (10, 30)


def test_missing_unreadable_and_bomb_images(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"record unc/val/3: image .*nope.jpg not found"):
        load_image(tmp_path / "nope.jpg", record_id="unc/val/3")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="record r1: image .*bad.jpg is unreadable"):
        load_image(bad, record_id="r1")
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: warning zone (1x-2x) is refused too
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # beyond 2x: PIL's own error
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(big)
