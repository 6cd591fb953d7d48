"""The HTTP app: :func:`create_app` wraps a :class:`Predictor` in a FastAPI application.

``POST /v1/ground`` grounds expressions in an image, ``GET /v1/model`` describes the model, ``GET /healthz`` says
the server is up (with its batching counters), ``/docs`` is the OpenAPI page. Every request is checked against
:class:`ServerLimits`; what a client sends gets a 4xx with a one-line ``detail`` when it cannot be used, never a 5xx.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lgrnet import __version__
from lgrnet.errors import LGRNetError
from lgrnet.inference.predictor import Predictor
from lgrnet.serve.batcher import Batcher, Overloaded
from lgrnet.serve.inputs import ClientError, decode_image, one_line, read_ground_request
from lgrnet.serve.limits import ServerLimits
from lgrnet.serve.schema import SCHEMA_VERSION, ErrorResponse, GroundResponse, grounding_response

_THRESHOLD_TEXT = ("the score (0 to 1) a box needs to be returned, for this request (a model with the generalized "
                   "head only; default: the server's)")
_GROUND_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object",
            "required": ["image", "expression"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "the image file"},
                "expression": {"type": "array", "items": {"type": "string"},
                               "description": "referring expression(s): repeat the field for several"},
                "threshold": {"type": "number", "description": _THRESHOLD_TEXT},
            },
        }},
        "application/json": {"schema": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "format": "byte", "description": "the image file, base64"},
                "image_path": {"type": "string",
                               "description": "a file under the server's --image-root (only when it has one)"},
                "expression": {"type": "string"},
                "expressions": {"type": "array", "items": {"type": "string"}},
                "threshold": {"type": "number", "description": _THRESHOLD_TEXT},
            },
        }},
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [(400, "malformed request (field, JSON, base64)"), (413, "body over the size limit"),
                         (415, "unsupported content type"), (422, "unusable image or expression"),
                         (429, "too many expressions waiting; try again shortly")]
}


def create_app(predictor: Predictor, limits: ServerLimits | None = None) -> FastAPI:
    """The grounding server of ``predictor``; its batcher's worker thread starts with the app and stops with it."""
    limits = limits or ServerLimits()
    batcher = Batcher(predictor, limits.max_batch, limits.max_wait_ms, limits.max_pending)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="LGR-NET grounding server",
        version=__version__,
        description="Ground referring expressions in images: per expression the box(es) the model returns (a "
        "model with the generalized head: zero, one or many, each with a score) and the predicted point.",
        lifespan=lifespan,
    )
    app.state.predictor, app.state.limits, app.state.batcher = predictor, limits, batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ClientError)
    async def _client_error(_request: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Overloaded)
    async def _overloaded(_request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": one_line(f"{where}: {first.get('msg', 'invalid request')}")}, status_code=422)

    @app.post("/v1/ground", response_model=GroundResponse, responses=_ERRORS, openapi_extra={"requestBody": _GROUND_BODY},
              summary="Ground one or more expressions in an image")
    async def ground(request: Request) -> JSONResponse:
        ground_request = await read_ground_request(request, limits)
        try:
            threshold = predictor.call_threshold(ground_request.threshold)
        except LGRNetError as exc:
            raise ClientError(422, str(exc)) from None
        image = await run_in_threadpool(decode_image, ground_request, limits)
        results = await batcher.predict([(image, text) for text in ground_request.expressions], threshold)
        for number, result in enumerate(results, start=1):
            if isinstance(result, LGRNetError):
                raise ClientError(422, f"expression {number}: {str(result).removeprefix('expression ')}")
        return JSONResponse(grounding_response(results, predictor.config.name, predictor.caveat))

    @app.get("/v1/model", summary="The model this server runs")
    async def model_info() -> dict[str, Any]:
        return describe_model(predictor, limits)

    @app.get("/healthz", summary="Liveness, and the batching counters since start")
    async def healthz() -> dict[str, Any]:
        stats = batcher.stats
        return {"status": "ok", "pending": batcher.pending, "forwards": stats.forwards, "pairs": stats.pairs,
                "mean_batch_size": round(stats.mean_batch_size, 3), "largest_batch": stats.largest_batch}

    return app


def describe_model(predictor: Predictor, limits: ServerLimits) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: the model's name and main settings, the schema version, the caveat."""
    model = predictor.config.model
    return {
        "name": predictor.config.name,
        "schema_version": SCHEMA_VERSION,
        "caveat": predictor.caveat,
        "generalized": predictor.generalized,
        "threshold": predictor.threshold,
        "config": {
            "image_size": model.image_size,
            "max_length": model.text.max_length,
            "text_encoder": model.text.name,
            "visual_backbone": f"{model.visual.kind} ({model.visual.timm_name})",
            "hidden_dim": model.hidden_dim,
            "num_layers": model.num_layers,
        },
        "device": str(predictor.device),
        "precision": predictor.precision,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_image_pixels": limits.max_image_pixels,
            "max_expressions": limits.max_expressions,
            "max_expression_chars": limits.max_expression_chars,
            "max_batch": limits.max_batch,
            "max_wait_ms": limits.max_wait_ms,
            "image_paths": limits.image_root is not None,
        },
    }


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413, whether its Content-Length says so up front or a
    chunked body grows past it (counted as it arrives, so an endless body is cut off, not buffered)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await JSONResponse({"detail": "Content-Length: not a number"}, status_code=400)(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"request body over the limit of {self.max_bytes:,} bytes"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
