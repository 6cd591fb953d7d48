"""SynthRef scenes: sampling a layout of coloured shapes and drawing it with anti-aliasing.

A scene is a canvas of varied size and aspect ratio (so the letterbox of the eval transform, spec 11.4, matters)
with a textured, low-saturation background and 2-8 saturated shapes. Each shape is drawn on its own patch at
``SUPERSAMPLE`` times the resolution and box-filtered down, which gives exact area coverage (anti-aliasing) and a
box that is tight around the drawn sub-pixels: every pixel with non-zero coverage intersects the box and the box
touches such pixels on all four sides.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond", "hexagon")
# Named colours far apart in RGB and all far from the muted background tones.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38),
    "orange": (247, 138, 22),
    "yellow": (242, 218, 30),
    "green": (36, 158, 64),
    "blue": (38, 82, 218),
    "purple": (136, 58, 186),
    "white": (248, 248, 248),
    "black": (24, 24, 24),
}
# Size classes as a fraction of the canvas' short side; neighbouring classes differ by 1.5x (jitter +-7%).
SIZES: dict[str, float] = {"small": 0.12, "medium": 0.18, "large": 0.27}
SIZE_JITTER = 0.07
SUPERSAMPLE = 4
MAX_OVERLAP = 0.2  # intersection / smaller box area allowed between two shapes' boxes
MIN_SIDE, MAX_SIDE = 160, 640


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. ``box`` is (x1, y1, x2, y2) in pixels, tight around the drawn sub-pixels; ``scale`` is
    the side of the square the shape is inscribed in (its size before class rounding)."""

    shape: str
    color: str
    size: str
    scale: float
    cx: float
    cy: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "scale": self.scale,
                "cx": self.cx, "cy": self.cy, "box": list(self.box)}


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[SceneObject, ...]
    background: dict


def _unit_outline(shape: str, rotation: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape inscribed in [-1, 1]^2 (y down); None for the circle (drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        pts = [(-0.86, -0.86), (0.86, -0.86), (0.86, 0.86), (-0.86, 0.86)]
    elif shape == "triangle":
        pts = [(0.0, -1.0), (1.0, 0.78), (-1.0, 0.78)]
    elif shape == "diamond":
        pts = [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    elif shape == "hexagon":
        pts = [(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]
    elif shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + math.pi / 5 * k
            pts.append((r * math.cos(a), r * math.sin(a)))
    elif shape == "heart":
        raw = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            raw.append((16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                                   - math.cos(4 * t))))
        pts = [(x / 16.5, (y - 2.5) / 14.6) for x, y in raw]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if rotation:
        c, s = math.cos(rotation), math.sin(rotation)
        pts = [(x * c - y * s, x * s + y * c) for x, y in pts]
    return pts


def _sample_canvas(rng: random.Random) -> tuple[int, int]:
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
    long_side = rng.uniform(240, MAX_SIDE)
    short_side = max(MIN_SIDE, long_side / max(aspect, 1 / aspect))
    w, h = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    return round(w), round(h)


def _overlap_ok(box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (o[2] - o[0]) * (o[3] - o[1]))
            if iw * ih > MAX_OVERLAP * smaller:
                return False
    return True


def sample_layout(rng: random.Random) -> tuple[int, int, list[dict]]:
    """Canvas size and 2-8 shape specs (class, colour, size, scale, centre, rotation), non-overlapping beyond
    ``MAX_OVERLAP``. A small palette per scene makes same-class and same-colour distractors common."""
    w, h = _sample_canvas(rng)
    short = min(w, h)
    n = rng.randint(2, 8)
    shapes = rng.sample(SHAPES, rng.choice((1, 2, 2, 3, 3, 4)))
    colors = rng.sample(list(COLORS), rng.randint(2, 5))
    specs: list[dict] = []
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(n):
        size = rng.choice(list(SIZES))
        scale = SIZES[size] * short * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
        half = scale / 2
        for _try in range(25):
            cx = rng.uniform(half + 2, w - half - 2)
            cy = rng.uniform(half + 2, h - half - 2)
            box = (cx - half, cy - half, cx + half, cy + half)
            if _overlap_ok(box, boxes):
                break
        else:
            continue  # no room left for this one
        shape = rng.choice(shapes)
        rotation = math.radians(rng.uniform(-12, 12)) if shape in ("star", "hexagon", "triangle") else 0.0
        specs.append({"shape": shape, "color": rng.choice(colors), "size": size, "scale": scale,
                      "cx": cx, "cy": cy, "rotation": rotation})
        boxes.append(box)
    return w, h, specs


_NOISE_TILE: np.ndarray | None = None
_TILE = 1024


def _noise_tile() -> np.ndarray:
    """A fixed tile of uniform pixel noise in [-16, 16] (same in every process); scenes use random crops of it,
    which is far cheaper than drawing fresh noise for every pixel."""
    global _NOISE_TILE
    if _NOISE_TILE is None:
        _NOISE_TILE = np.random.default_rng(20240607).integers(-16, 17, (_TILE, _TILE), dtype=np.int16)
    return _NOISE_TILE


def _background(rng: random.Random, nrng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, dict]:
    """Muted base tone + gradient + low-frequency blotches (drawn at 1/16 resolution and upsampled), then a faint
    texture and pixel noise added as one luminance layer."""
    grey = rng.uniform(92, 178)
    base = np.array([grey + rng.uniform(-14, 14) for _ in range(3)], dtype=np.float32)
    lh, lw = h // 16 + 2, w // 16 + 2
    ys = np.linspace(-0.5, 0.5, lh, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, lw, dtype=np.float32)[None, :]
    ang = rng.uniform(0, 2 * math.pi)
    low = (math.cos(ang) * xs + math.sin(ang) * ys) * rng.uniform(0, 40)
    blot = np.asarray(Image.fromarray(nrng.normal(0, 1, (max(2, h // 48), max(2, w // 48))).astype(np.float32),
                                      mode="F").resize((lw, lh), Image.BICUBIC))
    low = low + blot * rng.uniform(3, 12)
    # The low-frequency field is pure luminance: upsample one channel, offset by 128 to fit uint8.
    low_l = Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8), mode="L").resize((w, h), Image.BILINEAR)

    # High-frequency luminance: texture (separable outer products of 1-D waves) + noise, offset by 128.
    spread = rng.randint(3, 15)
    oy, ox = rng.randrange(_TILE - h + 1), rng.randrange(_TILE - w + 1)
    hf = (_noise_tile()[oy:oy + h, ox:ox + w] * spread) // 16
    texture = rng.choice(["none", "stripes", "checker", "dots"])
    if texture != "none":
        k = 2 * math.pi / rng.uniform(6, 24)
        amp = rng.uniform(4, 10)
        x1, y1 = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
        if texture == "stripes":
            t = math.radians(rng.uniform(0, 180))
            ax, ay = k * math.cos(t) * x1, k * math.sin(t) * y1
            pat = np.sin(ay)[:, None] * np.cos(ax)[None, :] + np.cos(ay)[:, None] * np.sin(ax)[None, :]
        elif texture == "checker":
            pat = np.sign(np.sin(y1 * k / 2))[:, None] * np.sign(np.sin(x1 * k / 2))[None, :]
        else:
            pat = (np.sin(y1 * k)[:, None] * np.sin(x1 * k)[None, :] > 0.6) * 2.0 - 1.0
        hf = hf + (pat * amp).astype(np.int16)
    layer = Image.fromarray((hf + np.asarray(low_l, dtype=np.int16)).clip(0, 255).astype(np.uint8), mode="L")
    solid = Image.new("RGB", (w, h), tuple(int(round(c)) for c in base))
    image = ImageChops.add(solid, Image.merge("RGB", (layer, layer, layer)), scale=1.0, offset=-128)
    return image, {"texture": texture, "noise": spread}


def _draw_shape(canvas: Image.Image, spec: dict, rgb: tuple[float, float, float], shade: float
                ) -> tuple[tuple[float, float, float, float], tuple]:
    """Draw one shape onto ``canvas`` in place; returns (tight box, (x0, y0, coverage uint8 array))."""
    f = SUPERSAMPLE
    half = spec["scale"] / 2
    x0, y0 = math.floor(spec["cx"] - half) - 1, math.floor(spec["cy"] - half) - 1
    pw = math.ceil(spec["cx"] + half) + 2 - x0
    ph = math.ceil(spec["cy"] + half) + 2 - y0
    big = Image.new("L", (pw * f, ph * f), 0)
    draw = ImageDraw.Draw(big)
    ox, oy = (spec["cx"] - x0) * f, (spec["cy"] - y0) * f
    r = half * f
    outline = _unit_outline(spec["shape"], spec["rotation"])
    if outline is None:
        draw.ellipse((ox - r, oy - r, ox + r, oy + r), fill=255)
    else:
        draw.polygon([(ox + u * r, oy + v * r) for u, v in outline], fill=255)
    bl, bt, br, bb = big.getbbox()
    box = (x0 + bl / f, y0 + bt / f, x0 + br / f, y0 + bb / f)
    cover = big.reduce(f)  # box filter = exact area coverage of each pixel
    # A soft vertical light gradient so shapes are not perfectly flat.
    light = 1.0 + shade * np.linspace(0.5, -0.5, ph, dtype=np.float32)[:, None, None]
    fill = np.clip(np.asarray(rgb, dtype=np.float32)[None, None, :] * light, 0, 255).astype(np.uint8)
    fill = np.broadcast_to(fill, (ph, pw, 3))
    canvas.paste(Image.fromarray(np.ascontiguousarray(fill), mode="RGB"), (x0, y0), cover)
    return box, (x0, y0, np.asarray(cover))


def render_scene(rng: random.Random, nrng: np.random.Generator, return_masks: bool = False
                 ) -> tuple[Scene, Image.Image, list | None]:
    """Sample and draw one scene. With ``return_masks`` also returns, per object, (x0, y0, coverage uint8 array)
    of its own drawn pixels before later shapes covered it (used by the tests)."""
    while True:
        w, h, specs = sample_layout(rng)
        if len(specs) >= 2:
            break
    image, bg = _background(rng, nrng, w, h)
    objects, masks = [], []
    for spec in specs:
        rgb = tuple(c + rng.uniform(-10, 10) for c in COLORS[spec["color"]])
        box, mask = _draw_shape(image, spec, rgb, rng.uniform(0.0, 0.25))
        # Positions used by the grammar are the centres of the drawn boxes (what a viewer sees).
        objects.append(SceneObject(spec["shape"], spec["color"], spec["size"], round(spec["scale"], 3),
                                   (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box))
        if return_masks:
            masks.append(mask)
    return Scene(w, h, tuple(objects), bg), image, (masks if return_masks else None)
