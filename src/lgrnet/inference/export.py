"""Predictions in the formats other tools read: COCO results JSON and ``supervision.Detections``.

lgrnet's own outputs give boxes as (x1, y1, x2, y2) in pixels of the original image: ``box_xyxy`` in
``lgrnet predict``'s output, ``box`` with ``"box_format": "xyxy"`` in ``lgrnet eval --output``. COCO results hold
COCO's (x, y, w, h) in pixels; every entry says so in its own ``box_format``. LGR-NET predicts one box per
expression with no confidence, so every COCO score is 1.0 and the Detections carry no confidence.
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


def to_coco_results(rows: Iterable[Mapping[str, Any]], category_id: int = 1) -> list[dict[str, Any]]:
    """COCO detection results (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, what
    ``pycocotools``' ``COCO.loadRes`` reads) of prediction rows. The image id is the row's ``image_id``, else the
    id a COCO file name in its ``image`` carries; ``expression`` and ``id`` are kept for reference."""
    results = []
    for index, row in enumerate(rows):
        where = f"prediction {index}"
        image_id = row.get("image_id")
        if image_id is None:
            image_id = coco_image_id(str(row.get("image", "")))
        if image_id is None:
            raise LGRNetError(f"{where}: image {row.get('image')!r} is not a COCO file name and the row has no "
                              "'image_id'; COCO results need COCO image ids")
        x1, y1, x2, y2 = box_xyxy(row, where)
        entry: dict[str, Any] = {"image_id": int(image_id), "category_id": category_id,
                                 "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                 "score": 1.0, "box_format": "xywh"}
        for key in ("expression", "id"):
            if row.get(key) is not None:
                entry[key] = row[key]
        results.append(entry)
    return results


def to_detections(predictions: Sequence[Any]):
    """A ``supervision.Detections`` of the predictions of one image (``Prediction`` objects or output rows):
    ``xyxy`` in original pixels, the expressions in ``data["expression"]``, class 0 for every box (one class,
    "the referred object", so that supervision's annotators colour them) and no confidence. Needs the optional
    ``supervision`` package."""
    try:
        import supervision as sv
    except ImportError:
        raise LGRNetError("converting to supervision.Detections needs supervision: pip install supervision") \
            from None
    import numpy as np

    boxes = np.array([box_xyxy(p, f"prediction {i}") for i, p in enumerate(predictions)],
                     dtype=np.float32).reshape(-1, 4)
    expressions = [p["expression"] if isinstance(p, Mapping) else p.expression for p in predictions]
    return sv.Detections(xyxy=boxes, class_id=np.zeros(len(boxes), dtype=int),
                         data={"expression": np.array(expressions, dtype=object)})
