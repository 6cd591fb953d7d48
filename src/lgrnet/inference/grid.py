"""A grid of predictions under a title: each tile one image with its predicted box(es) (with their scores, or "no
match", for a model with the generalized head), the coordinate point where the model's coordinate head was trained,
the ground truth and the expression (drawn by :mod:`lgrnet.inference.visualize`), scaled into a fixed cell."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from lgrnet.inference.images import ImageInput
from lgrnet.inference.predictor import Prediction
from lgrnet.inference.visualize import BACKGROUND, TEXT_COLOR, add_caption, draw_prediction, font

CELL_SIZE = (320, 240)  # (width, height) each tile's image is scaled into
COLUMNS = 4
_GAP, _TITLE_BAND = 8, 36


# One ground-truth box (x1, y1, x2, y2), a target set (a sequence of boxes, possibly empty), or None.
GroundTruth = Sequence[float] | Sequence[Sequence[float]] | None


def _tile(image: ImageInput, prediction: Prediction, ground_truth: GroundTruth) -> Image.Image:
    cell_w, cell_h = CELL_SIZE
    drawn = draw_prediction(image, prediction, ground_truth=ground_truth, caption=False)
    drawn.thumbnail(CELL_SIZE)
    cell = Image.new("RGB", CELL_SIZE, BACKGROUND)
    cell.paste(drawn, ((cell_w - drawn.width) // 2, (cell_h - drawn.height) // 2))
    return add_caption(cell, prediction.expression, max_lines=2, size=14)


def prediction_grid(images: Sequence[ImageInput], predictions: Sequence[Prediction],
                    ground_truths: Sequence[GroundTruth], title: str) -> Image.Image:
    """``predictions[i]`` drawn on ``images[i]`` with ``ground_truths[i]`` (original pixels: one box, a record's
    target set, or None), in rows of :data:`COLUMNS` tiles under ``title``."""
    if not len(images) == len(predictions) == len(ground_truths):
        raise ValueError(f"{len(images)} images, {len(predictions)} predictions and {len(ground_truths)} ground "
                         "truths: expected one of each per tile")
    tiles = [_tile(*item) for item in zip(images, predictions, ground_truths)]
    rows = [tiles[i:i + COLUMNS] for i in range(0, len(tiles), COLUMNS)]
    cell_w = CELL_SIZE[0]
    width = min(COLUMNS, len(tiles)) * (cell_w + _GAP) + _GAP
    height = _TITLE_BAND + sum(max(t.height for t in row) + _GAP for row in rows) + _GAP
    grid = Image.new("RGB", (max(width, 2 * cell_w), height), BACKGROUND)
    ImageDraw.Draw(grid).text((_GAP, 8), title, font=font(16), fill=TEXT_COLOR)
    y = _TITLE_BAND
    for row in rows:
        for j, tile in enumerate(row):
            grid.paste(tile, (_GAP + j * (cell_w + _GAP), y))
        y += max(t.height for t in row) + _GAP
    return grid
