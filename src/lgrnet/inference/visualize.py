"""Pictures of a prediction, in the manner of the paper's Fig. 5 and 6 (PIL only, no plotting library).

* :func:`draw_prediction`: the image with the predicted box (for a model with the generalized head: every box
  found, each with its score, or "no match" written on the image), the predicted coordinate point (paper III-B;
  only for a model whose coordinate head was trained, see :attr:`Prediction.coord_trained`), the ground-truth
  box(es) when known, and the expression as a caption.
* :func:`attention_overlay`: the prediction token's attention over visual tokens for one layer, as a heat map
  over the original image (token grids upsampled, letterbox undone; see :mod:`lgrnet.inference.attention`).
* :func:`word_attention_panel`: the attention over the words of the expression, one row per layer: each word on a
  background whose strength is its weight, with a bar under it.
* :func:`render_figure`: all of it in one image, the box overlay and heat maps as tiles ``tile_height`` px high
  (320 by default): a figure for reading, not at the photo's resolution.
* :func:`save_image` writes an image in the format its suffix names (PNG or JPEG); :func:`save_png` always PNG.

:func:`draw_prediction` and :func:`attention_overlay` draw on the image at its own size, so the box's pixel
coordinates are the prediction's ``box_xyxy``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lgrnet.errors import LGRNetError
from lgrnet.inference.images import ImageInput, as_rgb_image
from lgrnet.inference.predictor import Prediction

PRED_COLOR = (230, 40, 40)
GT_COLOR = (40, 200, 70)
POINT_COLOR = (255, 215, 0)
TEXT_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)

# Anchor colours of the heat-map scale (dark blue -> blue -> cyan -> yellow -> red), "jet"-like as in the paper.
_ANCHORS = np.array([[0, 0, 110], [0, 60, 255], [0, 220, 255], [255, 230, 0], [220, 20, 0]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 colours (piecewise-linear over the anchor colours)."""
    values = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(values).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (values - low)[..., None]
    colours = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return colours.round().astype(np.uint8)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled scalable font at ``size`` px (falls back to the fixed bitmap font on old Pillow builds)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - Pillow < 10.1 or without FreeType
        return ImageFont.load_default()


def _safe_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fnt, fill) -> None:
    """Draw text; characters the font cannot encode (bitmap font + emoji) degrade to '?' instead of raising."""
    try:
        draw.text(xy, text, font=fnt, fill=fill)
    except UnicodeEncodeError:
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), font=fnt, fill=fill)


def _text_width(draw: ImageDraw.ImageDraw, text: str, fnt) -> float:
    try:
        return draw.textlength(text, font=fnt)
    except UnicodeEncodeError:
        return draw.textlength(text.encode("latin-1", "replace").decode("latin-1"), font=fnt)


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt, width: float, max_lines: int = 3) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last one ellipsised)."""
    lines: list[str] = []
    current = ""
    text = text[: 400 * max_lines]  # no caption line holds 400 characters: the rest would be cut anyway
    for word in text.split():
        while _text_width(draw, word, fnt) > width and len(word) > 1:  # break words longer than a line
            cut = max(1, int(len(word) * width / max(_text_width(draw, word, fnt), 1.0)) - 1)
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if _text_width(draw, candidate, fnt) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and _text_width(draw, last + " ...", fnt) > width:
            last = last[:-1]
        lines[-1] = last + " ..."
    return lines or [""]


def _line_width(image: Image.Image) -> int:
    return max(2, round(max(image.size) / 200))


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], color, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // (2 * dash)))
        for k in range(steps + 1):
            t0, t1 = min(1.0, 2 * k * dash / max(length, 1)), min(1.0, (2 * k + 1) * dash / max(length, 1))
            if t0 >= 1.0:
                break
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      fill=color, width=width)


def _draw_point(draw: ImageDraw.ImageDraw, xy: Sequence[float], radius: int) -> None:
    x, y = xy
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=POINT_COLOR, outline=(0, 0, 0),
                 width=max(1, radius // 3))


def _label_box(draw: ImageDraw.ImageDraw, box: Sequence[float], text: str, size: int, bounds: tuple[int, int]) -> None:
    """``text`` in white on a red tab at the box's top-left corner (inside the image)."""
    fnt = font(size)
    width, height = _text_width(draw, text, fnt) + size * 0.5, size * 1.25
    x = min(max(float(box[0]), 0.0), max(bounds[0] - width, 0.0))
    y = float(box[1]) - height if float(box[1]) >= height else float(box[1])
    draw.rectangle([x, y, x + width, y + height], fill=PRED_COLOR)
    _safe_text(draw, (x + size * 0.25, y + size * 0.1), text, fnt, BACKGROUND)


def _no_match(draw: ImageDraw.ImageDraw, size: tuple[int, int]) -> None:
    """"no match" in large dark letters on a white band at the image's top-left."""
    text_size = max(12, min(round(size[0] / 10), 48))
    fnt = font(text_size)
    text = "no match"
    width = _text_width(draw, text, fnt) + text_size * 0.6
    draw.rectangle([0, 0, width, text_size * 1.4], fill=BACKGROUND, outline=PRED_COLOR, width=max(1, text_size // 12))
    _safe_text(draw, (text_size * 0.3, text_size * 0.15), text, fnt, PRED_COLOR)


def _ground_truth_boxes(ground_truth: Sequence[float] | Sequence[Sequence[float]] | None) -> list[list[float]]:
    """One box (x1, y1, x2, y2) or a sequence of boxes (a target set, possibly empty) as a list of boxes."""
    if ground_truth is None:
        return []
    items = list(ground_truth)
    if items and not isinstance(items[0], (Sequence, np.ndarray)):
        return [[float(v) for v in items]]
    return [[float(v) for v in box] for box in items]


def draw_boxes(canvas: Image.Image, prediction: Prediction, width: int) -> None:
    """The prediction's boxes on ``canvas`` (in place): a classic model's one box; for a generalized head every
    box found with its score, or "no match" when there is none."""
    draw = ImageDraw.Draw(canvas)
    for box in prediction.boxes or []:
        draw.rectangle(box, outline=PRED_COLOR, width=width)
    if prediction.generalized:
        size = max(12, min(round(max(canvas.size) / 25), 32))  # legible in a thumbnail grid tile too
        for box, score in zip(prediction.boxes or [], prediction.scores or []):
            _label_box(draw, box, f"{score:.2f}", size, canvas.size)
        if not prediction.found:
            _no_match(draw, canvas.size)


def add_caption(image: Image.Image, text: str, max_lines: int = 3, size: int | None = None) -> Image.Image:
    """The image with a white band under it holding ``text`` (wrapped, at most ``max_lines`` lines)."""
    size = size or max(12, min(round(image.width / 28), 32))
    fnt = font(size)
    probe = ImageDraw.Draw(image)
    lines = _wrap(probe, text, fnt, image.width - size, max_lines)
    band = round(len(lines) * size * 1.3 + size * 0.6)
    canvas = Image.new("RGB", (image.width, image.height + band), BACKGROUND)
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        _safe_text(draw, (size / 2, image.height + size * 0.3 + i * size * 1.3), line, fnt, TEXT_COLOR)
    return canvas


def draw_prediction(
    image: ImageInput,
    prediction: Prediction,
    ground_truth: Sequence[float] | Sequence[Sequence[float]] | None = None,
    caption: bool = True,
    point: bool | None = None,
) -> Image.Image:
    """Predicted box(es) (red; with their scores for a generalized head, or "no match"), the coordinate point
    (yellow), ground truth (green, dashed: one box or a target set) and the expression.

    The point is drawn when ``point`` is True; by default (None) only when the model's coordinate head was
    trained by a loss of its own (``prediction.coord_trained``): the paper's has none, so its point need not mark
    the object."""
    canvas = as_rgb_image(image)
    if canvas.size != tuple(prediction.image_size):
        raise ValueError(f"image is {canvas.size}, the prediction was made on an image of {prediction.image_size}")
    draw = ImageDraw.Draw(canvas)
    width = _line_width(canvas)
    truths = _ground_truth_boxes(ground_truth)
    for box in truths:
        _dashed_rectangle(draw, box, GT_COLOR, width, dash=4 * width)
    draw_boxes(canvas, prediction, width)
    show_point = prediction.coord_trained if point is None else point
    if show_point:
        _draw_point(draw, prediction.coord_xy, radius=2 * width + 1)
    if caption:
        label = prediction.expression
        if ground_truth is not None:
            label += f"   ({legend(show_point)})"
        canvas = add_caption(canvas, label)
    return canvas


def legend(point: bool) -> str:
    """What the colours of :func:`draw_prediction` mean."""
    return "red: prediction, green dashed: ground truth" + (", yellow: coordinate" if point else "")


def attention_overlay(image: ImageInput, prediction: Prediction, layer: int = -1, alpha: float = 0.6,
                      box: bool = True) -> Image.Image:
    """The layer's attention over visual tokens as a heat map on the image (with the predicted box)."""
    base = as_rgb_image(image)
    heat = prediction.attention_map(layer, normalize=True)
    colours = colormap(heat).astype(np.float32)
    # Weak attention lets the photo show through; strong attention is mostly colour.
    weight = (alpha * (0.35 + 0.65 * heat))[..., None]
    mixed = np.asarray(base, dtype=np.float32) * (1 - weight) + colours * weight
    out = Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8), mode="RGB")
    if box:
        draw_boxes(out, prediction, _line_width(out))
    return out


def word_attention_panel(prediction: Prediction, layers: Sequence[int], width: int) -> Image.Image:
    """Rows of coloured words, one per layer: background strength and the bar under a word show its weight."""
    size = max(12, min(round(width / 45), 20))
    fnt = font(size)
    gap = round(size * 0.45)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = _text_width(probe, "layer 00 ", fnt) + gap
    row_height = round(size * 1.9)
    rows: list[list[tuple[float, float, str, float]]] = []  # per layer: (x, line, word, share)
    for layer in layers:
        words = prediction.words(layer)
        top = max((w for _, w in words), default=0.0) or 1.0
        x, line, placed = label_width, 0, []
        for word, weight in words:
            w = _text_width(probe, word, fnt) + gap
            if x + w > width - gap and x > label_width:
                x, line = label_width, line + 1
            placed.append((x, line, word, weight / top))
            x += w + gap / 2
        rows.append(placed)
    height = gap + sum((1 + max((p[1] for p in r), default=0)) * row_height + gap for r in rows)
    panel = Image.new("RGB", (width, max(height, row_height)), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    y = gap
    for layer, placed in zip(layers, rows):
        index = layer if layer >= 0 else prediction.num_layers + layer
        _safe_text(draw, (gap, y + size * 0.2), f"layer {index + 1}", fnt, TEXT_COLOR)
        for x, line, word, share in placed:
            top = y + line * row_height
            w = _text_width(draw, word, fnt) + gap
            colour = tuple(int(255 - share * (255 - c)) for c in PRED_COLOR)  # white -> red with the weight
            draw.rectangle([x, top, x + w, top + size * 1.35], fill=colour)
            draw.rectangle([x, top + size * 1.45, x + w * share, top + size * 1.65], fill=(60, 60, 60))
            _safe_text(draw, (x + gap / 2, top + size * 0.15), word, fnt, TEXT_COLOR)
        y += (1 + max((p[1] for p in placed), default=0)) * row_height + gap
    return panel


def _fit_height(image: Image.Image, height: int) -> Image.Image:
    width = max(1, min(round(image.width * height / image.height), 4 * height))
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _label(image: Image.Image, text: str) -> Image.Image:
    size = max(12, round(image.height / 18))
    band = round(size * 1.6)
    out = Image.new("RGB", (image.width, image.height + band), BACKGROUND)
    out.paste(image, (0, band))
    _safe_text(ImageDraw.Draw(out), (size / 3, size * 0.25), text, font(size), TEXT_COLOR)
    return out


def render_figure(
    image: ImageInput,
    prediction: Prediction,
    layers: Sequence[int] | None = None,
    ground_truth: Sequence[float] | Sequence[Sequence[float]] | None = None,
    tile_height: int = 320,
) -> Image.Image:
    """One picture: the box overlay, then (when the prediction carries attention) a heat map per chosen layer
    and the word attention of those layers. ``layers`` are 0-based, negative from the end; default: all."""
    base = as_rgb_image(image)
    overlay = draw_prediction(base, prediction, ground_truth, caption=False)
    tiles = [_label(_fit_height(overlay, tile_height), "prediction")]
    if prediction.visual_attention is not None:
        count = prediction.num_layers
        layers = list(range(count)) if layers is None else [int(v) for v in layers]
        for layer in layers:
            if not -count <= layer < count:
                raise ValueError(f"layer {layer}: the model has {count} layers (0..{count - 1})")
        for layer in layers:
            heat = attention_overlay(base, prediction, layer)
            tiles.append(_label(_fit_height(heat, tile_height), f"layer {(layer % count) + 1} attention"))
    gap = 8
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1)
    top = Image.new("RGB", (width, tiles[0].height + 2 * gap), BACKGROUND)
    x = gap
    for tile in tiles:
        top.paste(tile, (x, gap))
        x += tile.width + gap
    figure = add_caption(top, prediction.expression, size=max(12, round(tile_height / 14)))
    if prediction.word_attention is not None and layers:
        words = word_attention_panel(prediction, layers, figure.width)
        both = Image.new("RGB", (figure.width, figure.height + words.height), BACKGROUND)
        both.paste(figure, (0, 0))
        both.paste(words, (0, figure.height))
        figure = both
    return figure


# File formats by suffix: what save_image writes (JPEG at a quality where the thin box lines stay crisp).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95


def image_format(path: str | os.PathLike) -> str:
    """PIL format name for ``path``'s suffix (``PNG`` or ``JPEG``); LGRNetError naming the path otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise LGRNetError(f"{path}: unknown image suffix {suffix or '(none)'!r}; use one of "
                          f"{', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` in the format its suffix names (.png, .jpg/.jpeg; parent folders created)."""
    path = Path(path)
    fmt = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full-resolution colour (no 4:2:0 subsampling): a thin red box line would otherwise bleed into its neighbours.
    options = {"quality": JPEG_QUALITY, "subsampling": 0} if fmt == "JPEG" else {}
    image.convert("RGB").save(path, format=fmt, **options)
    return path


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG whatever the suffix (parent folders created); :func:`save_image` follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
