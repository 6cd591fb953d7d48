"""Turning whatever a user hands the model (a path, a PIL image, a numpy array) into a safe RGB PIL image.

:func:`as_rgb_image` is the one entry point (the :class:`~lgrnet.inference.processor.Processor`, the demo and the
pictures use it). Files are decoded by the data pipeline's :func:`lgrnet.data.image.load_image`, so inference sees
exactly what evaluation sees, and PIL images go through its mode conversion.

Every failure becomes a one-line :class:`~lgrnet.errors.DataError` that names the image: unreadable or truncated
files, text files with an image suffix, decompression bombs, arrays of the wrong shape. Unusual but valid images
are converted rather than rejected: grayscale, palette, RGBA, CMYK, 16-bit and float images, and EXIF-rotated
photos (turned upright, as a viewer shows them, so boxes land where the user sees the object).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lgrnet.data.image import check_pixel_count, load_image, to_rgb
from lgrnet.errors import DataError

ImageInput = str | os.PathLike | Image.Image | np.ndarray

# Far below PIL's own bomb limit (~179 Mpx): an image this large would be shrunk to 640 px anyway, and decoding
# it costs gigabytes. Users with giant scans can raise it (Predictor(max_image_pixels=...), Processor(...)).
DEFAULT_MAX_PIXELS = 64_000_000


def describe(image: object) -> str:
    """A short name for an image input, for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        return f"PIL image {image.width}x{image.height} {image.mode}"
    if isinstance(image, np.ndarray):
        return f"array {tuple(image.shape)} {image.dtype}"
    return type(image).__name__


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an upright RGB image, or raise DataError naming the file.

    The file is opened once: its pixel count is checked from the header before anything is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path}: no such file")
    image = load_image(path, max_pixels=max_pixels)
    if image.width < 1 or image.height < 1:
        raise DataError(f"image {path}: empty image ({image.width}x{image.height})")
    return image


def from_pil(img: Image.Image, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Upright RGB copy of a PIL image of any mode (the data pipeline's conversion: 16-bit rescaled, alpha dropped);
    the caller's image is left as it is."""
    check_pixel_count(img.size, max_pixels, name)
    if img.width < 1 or img.height < 1:
        raise DataError(f"{name}: empty image ({img.width}x{img.height})")
    with contextlib.suppress(Exception):  # a malformed EXIF block must not make a decodable image unusable
        img = ImageOps.exif_transpose(img)
    return to_rgb(img).copy()


def from_array(array: np.ndarray, name: str = "array", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """RGB image from an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array (uint8, uint16 or float in [0, 1])."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(f"{name}: expected an [H, W], [H, W, 3] or [H, W, 4] array, got shape {tuple(array.shape)}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{name}: empty image ({array.shape[1]}x{array.shape[0]})")
    check_pixel_count((array.shape[1], array.shape[0]), max_pixels, name)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{name}: array contains NaN or infinite values")
        # Float images are taken to be in [0, 1] (the torchvision/matplotlib convention).
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{name}: unsupported array dtype {array.dtype}")
        array = _to_uint8(array)
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]))


def as_rgb_image(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An upright RGB PIL image from a file path, a PIL image or an array (see :func:`from_array`)."""
    if isinstance(image, (str, os.PathLike)):
        return open_image(image, max_pixels)
    if isinstance(image, Image.Image):
        try:
            return from_pil(image, name=describe(image), max_pixels=max_pixels)
        except DataError:
            raise
        except (OSError, ValueError) as exc:
            raise DataError(f"{describe(image)}: cannot decode ({_first_line(exc)})") from None
    if isinstance(image, np.ndarray):
        return from_array(image, name=describe(image), max_pixels=max_pixels)
    raise DataError(f"image: expected a file path, PIL image or numpy array, got {type(image).__name__}")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer or float data of any range to uint8 (16-bit: divide by 257, so 65535 -> 255)."""
    array = array.astype(np.float64)
    top = array.max(initial=0.0)
    if top <= 255:
        scale = 1.0
    elif top <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
