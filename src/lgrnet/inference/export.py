"""Predictions in the formats other tools read: COCO results JSON and ``supervision.Detections``.

lgrnet's own outputs give boxes as (x1, y1, x2, y2) in pixels of the original image: ``box_xyxy`` in
``lgrnet predict``'s output, ``box`` with ``"box_format": "xyxy"`` in ``lgrnet eval --output``. COCO results hold
COCO's (x, y, w, h) in pixels; every entry says so in its own ``box_format``. A classic LGR-NET predicts one box
per expression with no confidence: its COCO score is 1.0 and its Detections carry no confidence. A model with the
generalized head gives one entry per box it found (``boxes``/``scores`` of a prediction), with its score, and none
for an expression it found nothing for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lgrnet.data.coco import coco_image_id
from lgrnet.errors import LGRNetError


def box_xyxy(prediction: Any, where: str = "prediction") -> tuple[float, float, float, float]:
    """The (x1, y1, x2, y2) pixel box of a :class:`~lgrnet.inference.predictor.Prediction` or of an output row
    of ``lgrnet predict`` (``box_xyxy``) or ``lgrnet eval --output`` (``box``, ``box_format`` xyxy)."""
    if not isinstance(prediction, Mapping):
        box = getattr(prediction, "box_xyxy", None)
    elif "box_xyxy" in prediction:
        box = prediction["box_xyxy"]
    else:
        if prediction.get("box_format", "xyxy") != "xyxy":
            raise LGRNetError(f"{where}: box_format {prediction['box_format']!r}, expected 'xyxy'")
        box = prediction.get("box")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise LGRNetError(f"{where}: no box (x1, y1, x2, y2) in 'box_xyxy' or 'box'") from None
    return x1, y1, x2, y2


def scored_boxes(prediction: Any, where: str = "prediction"
                 ) -> list[tuple[tuple[float, float, float, float], float | None]]:
    """The (box, score) pairs of a prediction (object or output row): every box a generalized head found with its
    score (none when it found nothing), or a classic prediction's one box with score None."""
    get = prediction.get if isinstance(prediction, Mapping) else lambda key: getattr(prediction, key, None)
    scores = get("scores")
    if scores is None:
        return [(box_xyxy(prediction, where), None)]
    boxes = get("boxes")
    if not isinstance(boxes, Sequence) or not isinstance(scores, Sequence) or len(boxes) != len(scores):
        raise LGRNetError(f"{where}: 'boxes' and 'scores' must be lists of the same length")
    pairs = []
    for box, score in zip(boxes, scores):
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise LGRNetError(f"{where}: a box in 'boxes' is not (x1, y1, x2, y2)") from None
        pairs.append(((x1, y1, x2, y2), float(score)))
    return pairs


def to_coco_results(rows: Iterable[Mapping[str, Any]], category_id: int = 1) -> list[dict[str, Any]]:
    """COCO detection results (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, what
    ``pycocotools``' ``COCO.loadRes`` reads) of prediction rows. The image id is the row's ``image_id``, else the
    id a COCO file name in its ``image`` carries; ``expression`` and ``id`` are kept for reference. A row of a
    generalized head gives an entry per box found, with its score; a classic row one entry with score 1.0."""
    results = []
    for index, row in enumerate(rows):
        where = f"prediction {index}"
        image_id = row.get("image_id")
        if image_id is None:
            image_id = coco_image_id(str(row.get("image", "")))
        if image_id is None:
            raise LGRNetError(f"{where}: image {row.get('image')!r} is not a COCO file name and the row has no "
                              "'image_id'; COCO results need COCO image ids")
        for (x1, y1, x2, y2), score in scored_boxes(row, where):
            entry: dict[str, Any] = {"image_id": int(image_id), "category_id": category_id,
                                     "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                     "score": 1.0 if score is None else round(score, 6), "box_format": "xywh"}
            for key in ("expression", "id"):
                if row.get(key) is not None:
                    entry[key] = row[key]
            results.append(entry)
    return results


def to_detections(predictions: Sequence[Any]):
    """A ``supervision.Detections`` of the predictions of one image (``Prediction`` objects or output rows):
    ``xyxy`` in original pixels, the expressions in ``data["expression"]``, class 0 for every box (one class,
    "the referred object", so that supervision's annotators colour them). Classic predictions give one box each
    and no confidence; predictions of a generalized head give every box found, with its score as ``confidence``.
    Needs the optional ``supervision`` package."""
    try:
        import supervision as sv
    except ImportError:
        raise LGRNetError("converting to supervision.Detections needs supervision: pip install supervision") \
            from None
    import numpy as np

    pairs, expressions = [], []
    for i, p in enumerate(predictions):
        found = scored_boxes(p, f"prediction {i}")
        pairs += found
        expressions += [p["expression"] if isinstance(p, Mapping) else p.expression] * len(found)
    boxes = np.array([box for box, _ in pairs], dtype=np.float32).reshape(-1, 4)
    scores = [score for _, score in pairs]
    extra = {} if not scores or None in scores else {"confidence": np.array(scores, dtype=np.float32)}
    return sv.Detections(xyxy=boxes, class_id=np.zeros(len(boxes), dtype=int),
                         data={"expression": np.array(expressions, dtype=object)}, **extra)
