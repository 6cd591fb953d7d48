"""The training crop window (spec 11.3 branch B with the reference's bug fixed, spec 15.18) with its random draws
scripted: a window of side U{384..600} (at most the image) at a uniform position is accepted only if it holds the
box centre, x in [left, left + width) and y in [top, top + height), and leaves the box a positive area; the first
accepted window of 20 is the crop. Also the resizes around it and the clipping of mapped-back boxes."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lgrnet.data.transforms import TrainTransform, _Geometry, canvas_to_original

CROP_MIN, CROP_MAX, TRIES = 384, 600, 20  # spec 11.3


def accepted(box: tuple[float, float, float, float], window: tuple[int, int, int, int]) -> bool:
    """The acceptance rule, written out: the centre inside the half-open window, a clipped box of positive area."""
    x1, y1, x2, y2 = box
    left, top, width, height = window
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    centre_inside = left <= cx < left + width and top <= cy < top + height
    return centre_inside and min(x2, left + width) > max(x1, left) and min(y2, top + height) > max(y1, top)


class ScriptedRandint:
    """Stands in for random.randint: answers each call from a script and records the range asked for."""

    def __init__(self, values: list[int]):
        self.values = list(values)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        value = self.values.pop(0)
        assert low <= value <= high, (value, low, high)
        return value


def run_crop(monkeypatch, size: tuple[int, int], box, windows: list[tuple[int, int, int, int]]):
    script = ScriptedRandint([v for left, top, w, h in windows for v in (w, h, left, top)])
    monkeypatch.setattr(random, "randint", script)
    geo = _Geometry(Image.new("RGB", size), [box])
    TrainTransform._random_crop(geo)
    return geo, script.calls


def expected_calls(size: tuple[int, int], windows) -> list[tuple[int, int]]:
    w, h = size
    return [call for _, _, cw, ch in windows for call in
            ((min(CROP_MIN, w), min(w, CROP_MAX)), (min(CROP_MIN, h), min(h, CROP_MAX)), (0, w - cw), (0, h - ch))]


# (image size, box, windows tried in order (left, top, width, height), index of the window taken or None)
CASES = [
    # Box centre (650, 200). The window [250, 650) ends at the centre: refused (half-open); [251, 651) holds it.
    ((1000, 800), (600.0, 100.0, 700.0, 300.0), [(250, 0, 400, 400), (251, 0, 400, 400)], 1),
    # y the same way: centre (650, 600); the window rows [216, 600) end at the centre, [217, 601) hold it.
    ((1000, 1000), (600.0, 500.0, 700.0, 700.0), [(400, 216, 400, 384), (400, 217, 400, 384)], 1),
    # A window starting exactly at the centre holds it (left <= cx, top <= cy).
    ((1200, 1200), (600.0, 500.0, 700.0, 700.0), [(650, 600, 384, 384)], 0),
    # Box (0, 600)-(500, 1000), centre (250, 800). Window left 450, top 250 overlaps the box and holds (800, 250),
    # the centre with x and y swapped: refused. Then one holding the centre.
    ((1000, 1000), (0.0, 600.0, 500.0, 1000.0), [(450, 250, 400, 400), (0, 550, 400, 400)], 1),
    # Windows that hold 2 x the centre (1300, 400), half of it (325, 100) or a third (216.7, 66.7) but not the
    # centre (650, 200) itself are refused; then the right one.
    ((1600, 1000), (600.0, 100.0, 700.0, 300.0),
     [(1000, 100, 400, 400), (100, 0, 400, 400), (0, 0, 384, 384), (300, 0, 400, 400)], 3),
    # Zero-width box at the window's left edge: the clipped box has no area (refused); inside it, accepted.
    ((1000, 1000), (500.0, 500.0, 500.0, 600.0), [(500, 400, 400, 400), (499, 400, 400, 400)], None),
    ((1000, 1000), (500.0, 500.0, 600.0, 500.0), [(400, 500, 400, 400), (400, 499, 400, 400)], None),
    # A small image: the window is the whole image (side min(384, w) .. min(w, 600)).
    ((300, 200), (10.0, 20.0, 50.0, 60.0), [(0, 0, 300, 200)], 0),
    # Window sides at the top of their range, positions at the far end.
    ((700, 640), (650.0, 600.0, 700.0, 640.0), [(100, 40, 600, 600)], 0),
]


@pytest.mark.parametrize(("size", "box", "windows", "taken"), CASES)
def test_crop_takes_the_first_window_that_holds_the_centre(monkeypatch, size, box, windows, taken):
    assert [accepted(box, w) for w in windows].index(True) == taken if taken is not None else \
        not any(accepted(box, w) for w in windows)  # the rule above agrees with the case's note
    if taken is None:  # the script runs out: give the remaining tries a window that is always refused
        windows = windows + [windows[0]] * (TRIES - len(windows))
    geo, calls = run_crop(monkeypatch, size, box, windows)
    tried = windows[: (taken + 1) if taken is not None else TRIES]
    assert calls == expected_calls(size, tried)
    if taken is None:
        assert geo.size == size and (geo.dx, geo.dy) == (0.0, 0.0)
        assert geo.boxes[0].tolist() == list(box)
        return
    left, top, cw, ch = windows[taken]
    assert geo.size == (cw, ch) and (geo.dx, geo.dy) == (-left, -top)
    x1, y1, x2, y2 = box
    clipped = [max(x1, left) - left, max(y1, top) - top, min(x2, left + cw) - left, min(y2, top + ch) - top]
    assert geo.boxes[0].tolist() == pytest.approx(clipped, abs=1e-9)


def test_random_windows_against_the_rule(monkeypatch):
    """Random boxes (thin ones and ones on the border included) and windows, integer coordinates so that the
    centre often falls on a window edge; 20 windows per box, compared with the rule above."""
    rng = random.Random(7)
    for case in range(150):
        w, h = rng.choice([(500, 450), (700, 650), (390, 800)])
        x1, y1 = rng.randint(0, w - 1), rng.randint(0, h - 1)
        x2, y2 = min(w, x1 + rng.choice([0, 1, 2, 40, 300])), min(h, y1 + rng.choice([0, 1, 3, 50, 300]))
        box = (float(x1), float(y1), float(x2), float(y2))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        windows = []
        for _ in range(TRIES):
            cw, ch = rng.randint(min(CROP_MIN, w), min(w, CROP_MAX)), rng.randint(min(CROP_MIN, h), min(h, CROP_MAX))
            # Positions near the centre's edges more often than chance would put them.
            lefts = [int(cx), int(cx) + 1, int(cx) - cw, int(cx) - cw + 1, x1, x2 - cw, rng.randint(0, w - cw)]
            tops = [int(cy), int(cy) + 1, int(cy) - ch, int(cy) - ch + 1, y1, y2 - ch, rng.randint(0, h - ch)]
            left = min(max(rng.choice(lefts), 0), w - cw)
            top = min(max(rng.choice(tops), 0), h - ch)
            windows.append((left, top, cw, ch))
        taken = next((i for i, win in enumerate(windows) if accepted(box, win)), None)
        geo, calls = run_crop(monkeypatch, (w, h), box, windows)
        assert calls == expected_calls((w, h), windows[: (taken + 1) if taken is not None else TRIES]), case
        if taken is None:
            assert geo.size == (w, h), case
        else:
            left, top, cw, ch = windows[taken]
            assert (geo.size, geo.dx, geo.dy) == ((cw, ch), -left, -top), (case, box, windows[taken])


@pytest.mark.parametrize(("size", "side", "short", "long"), [
    ((300, 200), 400, (600, 400), (400, 267)),  # 300 x 400/200 = 600; 200 x 400/300 = 266.7 -> 267
    ((200, 500), 600, (600, 1500), (240, 600)),
    ((1, 1000), 100, None, (1, 100)),  # 1 x 100/1000 = 0.1 rounds to 0: at least one pixel
])
def test_resizes_by_short_and_long_side(size, side, short, long):
    by_short, by_long = _Geometry(Image.new("RGB", size), [(0, 0, 1, 1)]), _Geometry(Image.new("RGB", size), [(0, 0, 1, 1)])
    if short is not None:
        by_short.resize_short_side(side)
        assert by_short.size == short
    by_long.resize_long_side(side)
    assert by_long.size == long


def test_mapped_back_boxes_are_clipped_to_the_image():
    """A 200 x 100 image letterboxed at 320: scale 1.6, offset (0, 80). A predicted box reaching past every edge
    of the image comes back as exactly [0, 200] x [0, 100]; one inside is unchanged; clamp=False keeps it."""
    meta = SimpleNamespace(scale=(1.6, 1.6), offset=(0.0, 80.0), original_size=(200, 100), canvas_size=320)
    # canvas (cx, cy, w, h) / 320: x from -16 to 336 and y from 64 to 256 canvas px -> x -10..210, y -10..110.
    outside = torch.tensor([[160 / 320, 160 / 320, 352 / 320, 192 / 320]])
    inside = torch.tensor([[160 / 320, 160 / 320, 160 / 320, 80 / 320]])  # x 80..240 -> 50..150, y 120..200 -> 25..75
    assert canvas_to_original(outside, [meta]).tolist() == [[0.0, 0.0, 200.0, 100.0]]
    assert canvas_to_original(outside, [meta], clamp=False).tolist() == [pytest.approx([-10, -10, 210, 110])]
    assert canvas_to_original(inside, [meta]).tolist() == [pytest.approx([50, 25, 150, 75])]
    with pytest.raises(ValueError, match=r"expected boxes \[B, 4\] with B = 1 metas, got \(2, 4\)"):
        canvas_to_original(torch.cat([inside, inside]), [meta])
