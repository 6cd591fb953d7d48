"""Image loading: RGB whatever the file's mode, EXIF orientation applied, decompression bombs refused."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lgrnet.errors import DataError


def load_image(path: str | os.PathLike, record_id: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as an RGB PIL image with EXIF orientation applied.

    An image larger than ``PIL.Image.MAX_IMAGE_PIXELS`` is refused (PIL only warns between 1x and 2x the limit;
    here both are errors), and so is one above ``max_pixels`` when given (checked from the file's header, before
    anything is decoded). Any failure is a ``DataError`` naming the record (when given) and the file.
    """
    who = f"record {record_id}: " if record_id is not None else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_pixels is not None:
                    check_pixel_count(img.size, max_pixels, f"{who}image {path}")
                img.load()
                # In place: without an orientation tag the default returns a full copy of the decoded pixels.
                ImageOps.exif_transpose(img, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{who}image {path} refused as a possible decompression bomb ({exc})") from None
    except FileNotFoundError:
        raise DataError(f"{who}image {path} not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{who}image {path} is unreadable (not a readable image file)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{who}image {path} is unreadable ({type(exc).__name__}: {exc})") from None
    return to_rgb(img)


def check_pixel_count(size: tuple[int, int], max_pixels: int, name: str) -> None:
    """DataError naming ``name`` when a (width, height) image has more than ``max_pixels`` pixels."""
    width, height = size
    if width * height > max_pixels:
        raise DataError(f"{name}: {width}x{height} is {width * height:,} pixels, above the limit of {max_pixels:,} "
                        "(possible decompression bomb)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16/32-bit integer and float greyscale are rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0  # 0..65535 -> 0..255
        elif arr.size and arr.max() > 255:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        elif img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
