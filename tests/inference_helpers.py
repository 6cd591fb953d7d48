"""Helpers shared by the inference tests: a tiny random-weight checkpoint and the bad-input corpus.

The corpus is generated at test time (small, deterministic files) rather than committed: binary edge cases such as
a decompression bomb or a truncated JPEG are easier to read as code than as opaque bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_SMOKE = REPO_ROOT.parent / "shared" / "data" / "real_smoke"


def make_tiny_checkpoint(folder: Path, preset: str = "lgrnet-swin-s", seed: int = 0,
                         overrides: list[str] | None = None) -> Path:
    """A tiny-twin LGR-NET with random weights saved as a model folder (config.yaml + model.safetensors);
    ``overrides`` (``key.sub=value``) change its config, e.g. ``["model.grec.enabled=true"]``."""
    from tiny_configs import tiny_twin

    from lgrnet.config import apply_overrides
    from lgrnet.model.io import save_model
    from lgrnet.model.lgrnet import LGRNet

    config = apply_overrides(tiny_twin(preset), overrides)
    torch.manual_seed(seed)
    model = LGRNet(config.model, config.loss).eval()
    return save_model(model, config, folder)


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test picture (gradients + a bright square), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(x / 7 + y / 11)], axis=-1)
    rgb = (rgb * 200 + rng.uniform(0, 40, size=(height, width, 1))).clip(0, 255).astype(np.uint8)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (250, 240, 20)
    return rgb


def _bomb_png() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (10 Gpx) with a few bytes of data: a decompression bomb
    as far as any decoder that trusts the header is concerned."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    ok: bool  # True: a prediction must come back; False: a clear DataError
    size: tuple[int, int] | None = None  # expected upright (width, height) of a good image
    error: str = ""  # a word the error message must contain


def make_bad_inputs(folder: Path) -> list[Case]:
    """Write the bad-input image corpus into ``folder``; one :class:`Case` per file."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo(96, 64)
    cases: list[Case] = []

    def save(name: str, image: Image.Image, ok: bool = True, size=None, **kwargs) -> None:
        path = folder / name
        image.save(path, **kwargs)
        cases.append(Case(name, path, ok, size or image.size))

    def write(name: str, data: bytes, error: str) -> None:
        path = folder / name
        path.write_bytes(data)
        cases.append(Case(name, path, False, None, error))

    rgb = Image.fromarray(photo)
    jpeg = io.BytesIO()
    rgb.save(jpeg, format="JPEG", quality=90)
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    write("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated")
    write("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "truncated")
    write("corrupt.png", png.getvalue()[:40] + bytes(range(256)) * 8, "image")
    write("corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 3000, "image")
    write("text.jpg", b"this is a text file, not a JPEG\n" * 20, "not a readable image")
    write("empty.png", b"", "image")
    write("bomb.png", _bomb_png(), "bomb")

    save("rgb.png", rgb)
    save("gray.png", rgb.convert("L"))
    save("rgba.png", rgb.convert("RGBA"))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    save("palette.png", palette, transparency=0)
    save("cmyk.jpg", rgb.convert("CMYK"), format="JPEG")
    save("gray16.png", Image.fromarray(photo[:, :, 0].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", rgb, size=(64, 96), exif=exif.tobytes())
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    save("elongated.png", Image.fromarray(_photo(4000, 2)))
    save("tall.png", Image.fromarray(_photo(3, 3000)))
    return cases


CORPUS_NAMES = [
    "truncated.jpg", "truncated.png", "corrupt.png", "corrupt.jpg", "text.jpg", "empty.png", "bomb.png",
    "rgb.png", "gray.png", "rgba.png", "palette.png", "cmyk.jpg", "gray16.png", "exif_rotated.jpg", "one_pixel.png",
    "elongated.png", "tall.png",
]

# Expressions: (text, ok). A 10,000-character expression is accepted and cut to the model's max_length.
EXPRESSIONS = [
    ("", False),
    ("   \t\n ", False),
    (("the yellow square " * 556)[:9_999] + "x", True),  # 10,000 characters
    ("le carré jaune à gauche", True),
    ("左边的黄色方块", True),
    ("🐱 the cat on the left 🐶", True),
    ("\u200b\u200b", False),  # zero-width spaces: not whitespace to Python, but no word piece for the model
]
assert len(EXPRESSIONS[2][0]) == 10_000
