"""Reading a ``POST /v1/ground`` request: the image and the expressions, or a one-line client error.

Two forms are taken:

* ``multipart/form-data``: a file field ``image`` and one or more text fields ``expression``;
* ``application/json``: ``{"image": "<base64>", "expression": "..."}`` (or ``"expressions": [...]``), or
  ``"image_path"`` naming a file under the server's image root when the server was started with one.

Either may add ``threshold``: the score a generalized head's box needs in this request's answer (a number; the
server's own when absent).

Problems with the request's form (wrong content type, unknown or missing field, bad JSON or base64) are 400s;
problems with what it holds (an image that cannot be decoded or is above the pixel limit, an empty or over-long
expression) are 422s; everything is checked before the request waits for the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from lgrnet.data.image import load_image
from lgrnet.errors import DataError, LGRNetError
from lgrnet.inference.images import open_image
from lgrnet.inference.processor import check_expression
from lgrnet.serve.limits import ServerLimits

FORM_FIELDS = ("image", "expression", "threshold")
JSON_FIELDS = ("image", "image_path", "expression", "expressions", "threshold")
_DATA_URL = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)


class ClientError(LGRNetError):
    """A request the server cannot use: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(one_line(message))
        self.status = status


@dataclass
class GroundRequest:
    """What a client asked for: image bytes (or a server-side file) and the checked expressions."""

    expressions: list[str]
    image_bytes: bytes | None = None
    image_path: Path | None = None
    image_name: str = "image"
    threshold: float | None = None  # None: the server's own (checked against the model by the app)


async def read_ground_request(request: Request, limits: ServerLimits) -> GroundRequest:
    """The request's image and expressions; :class:`ClientError` for anything the server cannot take."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_form(request, limits)
    if media_type == "application/json":
        # Parsing and base64-decoding up to the body limit takes a while: off the event loop.
        return await run_in_threadpool(_read_json, await request.body(), limits)
    shown = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
    raise ClientError(415, f"{shown}: send multipart/form-data (fields image and expression) or application/json")


def decode_image(ground: GroundRequest, limits: ServerLimits) -> Image.Image:
    """The request's image as upright RGB, decoded as ``lgrnet predict`` decodes a file; :class:`ClientError` (422)
    naming the image when it cannot be used. Blocking: run it in a worker thread."""
    try:
        if ground.image_path is not None:
            return open_image(ground.image_path, limits.max_image_pixels)
        if not ground.image_bytes:
            raise DataError(f"image {ground.image_name}: empty (0 bytes)")
        image = load_image(_NamedBytes(ground.image_bytes, ground.image_name), max_pixels=limits.max_image_pixels)
        if image.width < 1 or image.height < 1:
            raise DataError(f"image {ground.image_name}: empty image ({image.width}x{image.height})")
        return image
    except LGRNetError as exc:
        raise ClientError(422, str(exc)) from None
    except Exception as exc:  # any decoder failure on client bytes is the client's bad image, never a 500
        raise ClientError(422, f"image {ground.image_name} is unreadable ({type(exc).__name__})") from None


def check_expressions(values: list[Any], limits: ServerLimits) -> list[str]:
    """The stripped expressions; :class:`ClientError` naming the first bad one (1-based)."""
    if not values:
        raise ClientError(400, "expression: missing (give one or more referring expressions)")
    if len(values) > limits.max_expressions:
        raise ClientError(422, f"{len(values)} expressions, above the limit of {limits.max_expressions} per request")
    texts = []
    for number, value in enumerate(values, start=1):
        if isinstance(value, str) and len(value) > limits.max_expression_chars:
            raise ClientError(422, f"expression {number}: {len(value):,} characters, above the limit of "
                                   f"{limits.max_expression_chars:,}")
        try:
            if isinstance(value, str):
                value.encode("utf-8")  # JSON may carry lone surrogates, which no answer could echo back
            texts.append(check_expression(value))
        except UnicodeEncodeError:
            raise ClientError(422, f"expression {number}: not valid Unicode (a lone surrogate)") from None
        except DataError as exc:
            raise ClientError(422, f"expression {number}: {str(exc).removeprefix('expression: ')}") from None
    return texts


def one_line(message: str, limit: int = 400) -> str:
    """The message on one line, cut to ``limit`` characters (clients may send names with newlines)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------------------------
# The two request forms

async def _read_form(request: Request, limits: ServerLimits) -> GroundRequest:
    try:
        # Fields of any size up to the body limit, so that an over-long expression gets the server's own message.
        form = await request.form(max_files=2, max_fields=limits.max_expressions + len(FORM_FIELDS),
                                  max_part_size=limits.max_body_bytes)
    except HTTPException as exc:  # Starlette's own message on a malformed body (400) or the body limit (413)
        raise ClientError(exc.status_code, f"multipart body: {exc.detail}") from None
    try:
        images: list[Any] = []
        expressions: list[Any] = []
        thresholds: list[Any] = []
        for name, value in form.multi_items():
            if name == "image":
                images.append(value)
            elif name in ("expression", "expressions"):
                expressions.append(value)
            elif name == "threshold":
                thresholds.append(value)
            else:
                raise ClientError(400, f"unknown form field {_shown(name)} (the form takes: {', '.join(FORM_FIELDS)})")
        if not images:
            raise ClientError(400, "image: missing (a file field named image)")
        if len(images) > 1:
            raise ClientError(400, "image: one image per request")
        upload = images[0]
        if not isinstance(upload, UploadFile):
            raise ClientError(400, "image: expected a file upload (curl -F image=@photo.jpg), got a text field")
        for number, value in enumerate(expressions, start=1):
            if not isinstance(value, str):
                raise ClientError(400, f"expression {number}: expected a text field, got a file")
        if len(thresholds) > 1:
            raise ClientError(400, "threshold: one per request")
        threshold = _form_threshold(thresholds[0]) if thresholds else None
        texts = check_expressions(expressions, limits)
        data = await upload.read()
        name = _shown(upload.filename) if upload.filename else "upload"
        return GroundRequest(texts, image_bytes=data, image_name=name, threshold=threshold)
    finally:
        await form.close()


def _read_json(body: bytes, limits: ServerLimits) -> GroundRequest:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) \
            else "not UTF-8"
        raise ClientError(400, f"body: not valid JSON ({detail})") from None
    except RecursionError:
        raise ClientError(400, "body: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise ClientError(400, f"body: expected a JSON object, got {type(payload).__name__}")
    unknown = [key for key in payload if key not in JSON_FIELDS]
    if unknown:
        raise ClientError(400, f"unknown field {_shown(unknown[0])} (the JSON body takes: {', '.join(JSON_FIELDS)})")
    if ("expression" in payload) == ("expressions" in payload):
        raise ClientError(400, "give either \"expression\" (a string) or \"expressions\" (a list of strings)")
    if "expression" in payload:
        expressions = [payload["expression"]]
    else:
        expressions = payload["expressions"]
        if not isinstance(expressions, list):
            raise ClientError(400, f"expressions: expected a list of strings, got {type(expressions).__name__}")
    if ("image" in payload) == ("image_path" in payload):
        raise ClientError(400, "give either \"image\" (base64 of the file) or \"image_path\"")
    threshold = payload.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ClientError(400, f"threshold: expected a number, got {type(threshold).__name__}")
    texts = check_expressions(expressions, limits)
    if "image_path" in payload:
        return GroundRequest(texts, image_path=_server_path(payload["image_path"], limits), image_name="image_path",
                             threshold=threshold)
    return GroundRequest(texts, image_bytes=_base64(payload["image"]), image_name="(base64)", threshold=threshold)


def _form_threshold(value: object) -> float:
    if not isinstance(value, str):
        raise ClientError(400, "threshold: expected a text field, got a file")
    try:
        return float(value)
    except ValueError:
        raise ClientError(400, f"threshold: expected a number, got {_shown(value)}") from None


def _base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ClientError(400, f"image: expected a base64 string, got {type(value).__name__}")
    text = "".join(_DATA_URL.sub("", value.strip(), count=1).split())  # data URLs and line-wrapped base64 too
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, "image: not valid base64") from None


def _server_path(value: object, limits: ServerLimits) -> Path:
    if limits.image_root is None:
        raise ClientError(400, "image_path: this server does not read files by path (send the image itself)")
    if not isinstance(value, str) or not value:
        raise ClientError(400, "image_path: expected a path relative to the server's image root")
    root = Path(limits.image_root).resolve()
    try:
        path = (root / value).resolve()
    except (OSError, RuntimeError, ValueError):
        raise ClientError(422, f"image_path {_shown(value)}: not a usable path") from None
    if not path.is_relative_to(root):
        raise ClientError(403, f"image_path {_shown(value)}: outside the server's image root")
    if not path.is_file():
        raise ClientError(404, f"image_path {_shown(value)}: no such file under the server's image root")
    return path


class _NamedBytes(io.BytesIO):
    """Bytes that the image loader's messages name like a file (``str()`` gives the client's name)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self._shown_name = name

    def __str__(self) -> str:
        return self._shown_name


def _shown(name: object, limit: int = 80) -> str:
    text = str(name)
    return repr(text if len(text) <= limit else text[:limit] + "...")
