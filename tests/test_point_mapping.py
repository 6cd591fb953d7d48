"""The predicted point's way back from the model canvas to original-image pixels: the inverse of the eval
letterbox, canvas = original * scale + offset per axis, on images whose two axes differ in offset and scale."""

from __future__ import annotations

import pytest
from PIL import Image

from lgrnet.data.transforms import EvalTransform
from lgrnet.inference.processor import Letterbox


def test_inverse_uses_each_axis_own_offset_and_scale():
    # canvas x = 50 * 1.6 + 3 = 83, canvas y = 20 * 1.5 + 40 = 70.
    letterbox = Letterbox(original_size=(200, 100), scale=(1.6, 1.5), offset=(3.0, 40.0), canvas_size=320)
    assert letterbox.canvas_to_original_xy(83.0, 70.0) == pytest.approx((50.0, 20.0), abs=1e-12)
    assert letterbox.canvas_to_original_xy(3.0, 40.0) == pytest.approx((0.0, 0.0), abs=1e-12)


@pytest.mark.parametrize(("size", "offset"), [((200, 100), (0, 80)), ((100, 200), (80, 0))])
def test_inverse_of_the_eval_letterbox(size, offset):
    """Long side 200 -> 320 (scale 1.6), the short side 160 centred: padding (320 - 160) / 2 = 80 on that axis.
    The canvas centre is the image centre; the image's far corner is at the canvas's padded edge."""
    sample = EvalTransform(320)(Image.new("RGB", size), "x", (0, 0, 1, 1))
    assert (sample.scale, sample.offset) == ((1.6, 1.6), offset)
    letterbox = Letterbox(original_size=size, scale=sample.scale, offset=sample.offset, canvas_size=320)
    w, h = size
    assert letterbox.canvas_to_original_xy(160.0, 160.0) == pytest.approx((w / 2, h / 2), abs=1e-9)
    far = (offset[0] + w * 1.6, offset[1] + h * 1.6)
    assert letterbox.canvas_to_original_xy(*far) == pytest.approx((w, h), abs=1e-9)
    assert letterbox.canvas_to_original_xy(float(offset[0]), float(offset[1])) == pytest.approx((0, 0), abs=1e-9)
