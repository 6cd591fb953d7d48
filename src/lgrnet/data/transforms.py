"""Train and eval transforms (spec 11.3 / 11.4), the letterbox and its inverse.

A transform takes ``(PIL RGB image, expression, box (x1, y1, x2, y2) original pixels)`` - or, for a generalized
record, ``boxes=`` its target set of zero, one or many boxes - and returns a :class:`TransformedSample`: the
ImageNet-normalised image letterboxed onto an S x S zero canvas, the padding mask (True = pad), the box(es) as
(cx, cy, w, h) / S on the canvas, the (possibly flipped) expression, and the affine map
``canvas = original * scale + offset`` (per axis) that :func:`canvas_to_original` (boxes) and
:func:`canvas_points_to_original` (points) invert. :class:`EvalTransform` also takes no box (inference).

Geometry goes through ``torchvision.transforms.v2.functional`` on ``tv_tensors.BoundingBoxes`` (float64, so the
sub-pixel box precision survives every resize/crop/flip). Fixes to the reference (spec 15.18): the random crop
accepts a window only if it contains the box centre (x against the left edge, y against the top) and leaves a
box of positive area; the optional flip mirrors left/right words and clock positions as whole words.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lgrnet.data.image import load_image
from lgrnet.data.spatial import SpatialMatch, is_spatial, swap_left_right

__all__ = ["EvalTransform", "TrainTransform", "TransformedSample", "canvas_points_to_original", "canvas_to_original",
           "load_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Spec 11.3 branch B: short side to one of these, then a random crop of side in [CROP_MIN, CROP_MAX].
SHORT_SIDES = (400, 500, 600)
CROP_MIN, CROP_MAX, CROP_TRIES = 384, 600, 20


@dataclass
class TransformedSample:
    image: torch.Tensor  # [3, S, S] float32, normalised, zero padding
    mask: torch.Tensor  # [S, S] bool, True = padding
    box: torch.Tensor | None  # [4] float32 (cx, cy, w, h) / S on the canvas; None when no box was given
    expression: str
    scale: tuple[float, float]  # canvas = original * scale + offset (sx < 0 after a horizontal flip)
    offset: tuple[float, float]
    original_size: tuple[int, int]  # (w, h)
    canvas_size: int
    # [N, 4] float32 (cx, cy, w, h) / S: the whole target set when one was given (``boxes=``), else None
    boxes: torch.Tensor | None = None


class _Geometry:
    """The image, its box(es) (one row per box) and the running affine map from original pixels to the image."""

    def __init__(self, image: Image.Image, boxes: Sequence[Sequence[float]] | None):
        self.image = image
        w, h = image.size
        self.boxes = None if boxes is None else tv_tensors.BoundingBoxes(
            torch.tensor([list(b) for b in boxes], dtype=torch.float64).reshape(-1, 4), format="XYXY",
            canvas_size=(h, w)
        )
        self.sx, self.sy, self.dx, self.dy = 1.0, 1.0, 0.0, 0.0

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def resize(self, new_w: int, new_h: int) -> None:
        w, h = self.image.size
        if (new_w, new_h) == (w, h):
            return
        self.image = F.resize(self.image, [new_h, new_w], interpolation=v2.InterpolationMode.BILINEAR)
        if self.boxes is not None:
            self.boxes = F.resize(self.boxes, [new_h, new_w])
        rx, ry = new_w / w, new_h / h
        self.sx, self.sy, self.dx, self.dy = self.sx * rx, self.sy * ry, self.dx * rx, self.dy * ry

    def resize_long_side(self, side: int) -> None:
        w, h = self.image.size
        r = side / max(w, h)
        self.resize(max(1, round(w * r)), max(1, round(h * r)))

    def resize_short_side(self, side: int) -> None:
        w, h = self.image.size
        r = side / min(w, h)
        self.resize(max(1, round(w * r)), max(1, round(h * r)))

    def crop(self, left: int, top: int, width: int, height: int) -> None:
        self.image = F.crop(self.image, top, left, height, width)
        self.boxes = F.crop(self.boxes, top, left, height, width)  # shifts and clamps to the window
        self.dx, self.dy = self.dx - left, self.dy - top

    def hflip(self) -> None:
        w = self.image.size[0]
        self.image = F.horizontal_flip(self.image)
        self.boxes = F.horizontal_flip(self.boxes)
        self.sx, self.dx = -self.sx, w - self.dx


# Normalisation folded into one in-place pass over uint8 pixels: (x / 255 - mean) / std = (x - 255 mean) / (255 std).
_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_INV_STD_255 = 1.0 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)


def _letterbox(geo: _Geometry, size: int, top: int, left: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Normalise, paste at (top, left) on a zero S x S canvas; mask True = pad; box -> (cx, cy, w, h) / S."""
    pixels = F.pil_to_tensor(geo.image)  # uint8 [3, h, w]
    _, h, w = pixels.shape
    canvas = torch.zeros(3, size, size, dtype=torch.float32)
    region = canvas[:, top : top + h, left : left + w]
    region.copy_(pixels).sub_(_MEAN_255).mul_(_INV_STD_255)
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[top : top + h, left : left + w] = False
    geo.dx, geo.dy = geo.dx + left, geo.dy + top
    if geo.boxes is None:
        return canvas, mask, None
    rows = []
    for x1, y1, x2, y2 in geo.boxes.tolist():
        x1, x2, y1, y2 = x1 + left, x2 + left, y1 + top, y2 + top
        rows.append(torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=torch.float64) / size)
    return canvas, mask, torch.stack(rows).float() if rows else torch.zeros(0, 4)


def _sample(geo: _Geometry, expression: str, canvas: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor | None,
            original_size: tuple[int, int], size: int, target_set: bool) -> TransformedSample:
    """``boxes`` [N, 4] canvas boxes (None: none given); ``target_set``: they came as ``boxes=`` (keep them all)."""
    box = None if boxes is None or len(boxes) == 0 else boxes[0]
    return TransformedSample(canvas, mask, box, expression, (geo.sx, geo.sy), (geo.dx, geo.dy), original_size, size,
                             boxes if target_set else None)


def _geometry_boxes(box: Sequence[float] | None, boxes: Sequence[Sequence[float]] | None
                    ) -> Sequence[Sequence[float]] | None:
    if box is not None and boxes is not None:
        raise ValueError("give a transform either box or boxes, not both")
    return boxes if boxes is not None else None if box is None else [box]


class EvalTransform:
    """Spec 11.4: long side to S (rounded), normalise, centred letterbox. Without a box (inference) the sample's
    ``box`` is None; the image, mask and affine map are the same either way."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image, expression: str, box: Sequence[float] | None = None,
                 boxes: Sequence[Sequence[float]] | None = None) -> TransformedSample:
        original_size = image.size
        geo = _Geometry(image, _geometry_boxes(box, boxes))
        geo.resize_long_side(self.image_size)
        w, h = geo.size
        top, left = (self.image_size - h) // 2, (self.image_size - w) // 2
        canvas, mask, out_boxes = _letterbox(geo, self.image_size, top, left)
        return _sample(geo, expression, canvas, mask, out_boxes, original_size, self.image_size, boxes is not None)


class TrainTransform:
    """Spec 11.3 training augmentation, with the reference's crop and flip bugs fixed (see module docstring).

    1. RandomSelect: spatial expressions (:func:`~lgrnet.data.spatial.is_spatial` with ``spatial_match``, the
       reference's substring rule by default) always take branch A; others take branch B with probability 0.5
       when ``augment.crop``. A: long side to s ~ scales. B: short side to one of {400, 500, 600}, random crop
       of side U{384..600} containing the box centre, then long side to s.
    2. Colour jitter with probability ``color_jitter_prob``: brightness/contrast/saturation factors
       U(1 - j, 1 + j) in random order. 3. Optional Gaussian blur (p 0.5, radius U(0.1, 2)).
    4. Optional horizontal flip (p 0.5) mirroring the expression (left/right words, clock positions).
    5. Normalise, letterbox at a random position (``augment.translate``) or centred.
    """

    def __init__(self, image_size: int, augment: Any, spatial_match: SpatialMatch = "substring"):
        self.image_size = image_size
        self.augment = augment
        self.spatial_match = spatial_match
        scales = [min(int(s), image_size) for s in augment.scales] or [image_size]
        self.scales = scales
        j = float(augment.color_jitter)
        self.jitter = (
            v2.RandomApply([v2.ColorJitter(brightness=j, contrast=j, saturation=j)], p=augment.color_jitter_prob)
            if j > 0 and augment.color_jitter_prob > 0
            else None
        )

    def __call__(self, image: Image.Image, expression: str, box: Sequence[float] | None = None,
                 boxes: Sequence[Sequence[float]] | None = None) -> TransformedSample:
        original_size = image.size
        geo = _Geometry(image, _geometry_boxes(box, boxes))
        if self.augment.crop and not is_spatial(expression, self.spatial_match) and random.random() < 0.5:
            geo.resize_short_side(random.choice(SHORT_SIDES))
            self._random_crop(geo)
        geo.resize_long_side(random.choice(self.scales))
        if self.jitter is not None:
            geo.image = self.jitter(geo.image)
        if self.augment.blur and random.random() < 0.5:
            geo.image = geo.image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        if self.augment.flip and random.random() < 0.5:
            geo.hflip()
            expression = swap_left_right(expression)
        w, h = geo.size
        if self.augment.translate:
            top, left = random.randint(0, self.image_size - h), random.randint(0, self.image_size - w)
        else:
            top, left = (self.image_size - h) // 2, (self.image_size - w) // 2
        canvas, mask, out_boxes = _letterbox(geo, self.image_size, top, left)
        return _sample(geo, expression, canvas, mask, out_boxes, original_size, self.image_size, boxes is not None)

    @staticmethod
    def _random_crop(geo: _Geometry) -> None:
        """RandomSizeCrop(384, 600) that keeps the targets: the window must contain every box centre (and leave
        each box a positive area). A no-target sample takes the first window drawn."""
        w, h = geo.size
        targets = geo.boxes.tolist()
        for _ in range(CROP_TRIES):
            cw = random.randint(min(CROP_MIN, w), min(w, CROP_MAX))
            ch = random.randint(min(CROP_MIN, h), min(h, CROP_MAX))
            left, top = random.randint(0, w - cw), random.randint(0, h - ch)
            if all(_keeps(box, left, top, cw, ch) for box in targets):
                geo.crop(left, top, cw, ch)
                return


def _keeps(box: Sequence[float], left: int, top: int, width: int, height: int) -> bool:
    """Whether a crop window contains the box centre (x against the left edge, y against the top) and leaves the box
    a positive area."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    inside = left <= cx < left + width and top <= cy < top + height
    return inside and min(x2, left + width) - max(x1, left) > 0 and min(y2, top + height) - max(y1, top) > 0


def canvas_to_original(boxes: torch.Tensor, metas: Sequence[Any], clamp: bool = True) -> torch.Tensor:
    """Map normalised canvas boxes (cx, cy, w, h) [B, 4] to (x1, y1, x2, y2) original pixels [B, 4].

    ``metas`` are :class:`~lgrnet.data.batch.SampleMeta` (or anything with ``scale``, ``offset``,
    ``canvas_size``, ``original_size``). With ``clamp`` the result is clipped to the original image.
    """
    boxes = boxes.detach().to(torch.float64).cpu()
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != len(metas):
        raise ValueError(f"expected boxes [B, 4] with B = {len(metas)} metas, got {tuple(boxes.shape)}")
    out = torch.empty_like(boxes)
    for i, meta in enumerate(metas):
        size = meta.canvas_size
        cx, cy, w, h = (boxes[i] * size).tolist()
        (sx, sy), (dx, dy) = meta.scale, meta.offset
        xa, xb = ((cx - w / 2) - dx) / sx, ((cx + w / 2) - dx) / sx
        ya, yb = ((cy - h / 2) - dy) / sy, ((cy + h / 2) - dy) / sy
        out[i] = torch.tensor([min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)], dtype=torch.float64)
        if clamp:
            width, height = meta.original_size
            out[i, 0::2] = out[i, 0::2].clamp(0, width)
            out[i, 1::2] = out[i, 1::2].clamp(0, height)
    return out.float()


def canvas_points_to_original(points: torch.Tensor, metas: Sequence[Any], clamp: bool = True) -> torch.Tensor:
    """Map normalised canvas points (x, y) / S [B, 2] to original pixels [B, 2] (float64), the letterbox's
    inverse as in :func:`canvas_to_original`; with ``clamp`` the points are clipped to the original image."""
    points = points.detach().to(torch.float64).cpu()
    if tuple(points.shape) != (len(metas), 2):
        raise ValueError(f"expected points [B, 2] with B = {len(metas)} metas, got {tuple(points.shape)}")
    canvas = torch.tensor([[float(meta.canvas_size)] for meta in metas], dtype=torch.float64)
    scale = torch.tensor([list(meta.scale) for meta in metas], dtype=torch.float64)
    offset = torch.tensor([list(meta.offset) for meta in metas], dtype=torch.float64)
    mapped = (points * canvas - offset) / scale
    if clamp:
        size = torch.tensor([list(meta.original_size) for meta in metas], dtype=torch.float64)
        mapped = torch.minimum(mapped.clamp(min=0.0), size)
    return mapped
