"""The server's response bodies: the versioned grounding result, and its models for the OpenAPI page.

A grounding response is ``{"schema_version", "model", "image_size", "predictions": [...]}`` (plus
``"model_caveat"`` for a model that has one); each prediction is :meth:`Prediction.to_dict`, the record
``lgrnet predict --json`` prints: ``box_xyxy`` in original-image pixels, ``box_normalized`` the same divided by
(W, H, W, H), ``coord`` the predicted point normalised to the image, ``coord_xy`` in pixels and
``expression_truncated`` when the expression had more word pieces than the model reads. ``boxes``, ``scores`` and
``found`` are the boxes the model returns: for a model with the generalized head every box whose score reaches
``threshold`` (possibly none; ``box_xyxy`` stays its highest-scoring box, with ``box_score``), for a classic model
its one box (``scores`` null, ``found`` true).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from lgrnet.inference.predictor import PREDICTION_SCHEMA_VERSION as SCHEMA_VERSION
from lgrnet.inference.predictor import Prediction


def grounding_response(predictions: Sequence[Prediction], model_name: str, caveat: str | None) -> dict[str, Any]:
    """The JSON body of a grounding answer: one prediction per expression, in the request's order."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": model_name,
        "image_size": list(predictions[0].image_size),
        "predictions": [p.to_dict() for p in predictions],
    }
    if caveat:
        body["model_caveat"] = caveat
    return body


class PredictionOut(BaseModel):
    expression: str = Field(description="the expression as the model read it (stripped)")
    image_size: list[int] = Field(description="(width, height) of the upright image in pixels")
    box_xyxy: list[float] = Field(description="(x1, y1, x2, y2) in original-image pixels")
    box_normalized: list[float] = Field(description="box_xyxy divided by (W, H, W, H)")
    coord: list[float] = Field(description="the predicted point (x, y), normalised to the image (see coord_trained)")
    coord_xy: list[float] = Field(description="the predicted point (x, y) in pixels")
    expression_truncated: bool = Field(description="the expression had more word pieces than the model reads")
    boxes: list[list[float]] = Field(description="every box returned, (x1, y1, x2, y2) pixels, highest score first: "
                                     "a generalized head's boxes scoring at least threshold (maybe none), a "
                                     "classic model's one box")
    scores: list[float] | None = Field(description="the boxes' scores (0 to 1); null for a classic model")
    found: bool = Field(description="at least one box was returned (always true for a classic model)")
    threshold: float | None = Field(description="the score a box needed; null for a classic model")
    box_score: float | None = Field(description="the score of box_xyxy, the highest-scoring box, found or not; "
                                    "null for a classic model")
    coord_trained: bool = Field(description="the coordinate head was trained by a loss of its own; when false "
                                "(as in the paper) the point need not mark the object")


class GroundResponse(BaseModel):
    schema_version: int = Field(SCHEMA_VERSION, description="version of this layout")
    model: str
    image_size: list[int] = Field(description="(width, height) of the upright image in pixels")
    predictions: list[PredictionOut] = Field(description="one per expression, in the request's order")
    model_caveat: str | None = Field(None, description="what to know before trusting this model's boxes")


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong with the request, on one line")
