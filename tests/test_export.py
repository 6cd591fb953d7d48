"""Prediction export: COCO results JSON and supervision.Detections, boxes converted by hand."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from lgrnet.data.coco import coco_image_id
from lgrnet.errors import LGRNetError
from lgrnet.inference.export import box_xyxy, to_coco_results, to_detections


def test_coco_image_ids_from_file_names():
    assert coco_image_id("data/COCO_train2014_000000000716.jpg") == 716
    assert coco_image_id("COCO_val2014_000000581929.jpg") == 581929
    assert coco_image_id("val2017/000000547144.jpg") == 547144
    assert coco_image_id("9739.jpg") is None and coco_image_id("COCO_train2014_716.jpg") is None


def test_coco_results_from_predict_and_eval_rows():
    predict_row = {"line": 1, "id": "a", "image": "imgs/COCO_train2014_000000000154.jpg", "expression": "zebra",
                   "box_xyxy": [11.98, 315.59, 361.06, 640.0], "box_normalized": [0.03, 0.49, 0.85, 1.0]}
    eval_row = {"id": "unc/testB/3", "image": "/coco/COCO_train2014_000000000605.jpg", "expression": "bus",
                "box": [10.0, 20.0, 40.0, 60.0], "box_format": "xyxy", "gt_box": [0, 0, 1, 1]}
    own_id = {"image": "kitchen.jpg", "image_id": 42, "expression": "mug", "box": [1, 2, 3, 5]}
    assert to_coco_results([predict_row, eval_row, own_id], category_id=7) == [
        {"image_id": 154, "category_id": 7, "bbox": [11.98, 315.59, 349.08, 324.41], "score": 1.0,
         "box_format": "xywh", "expression": "zebra", "id": "a"},
        {"image_id": 605, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 1.0, "box_format": "xywh",
         "expression": "bus", "id": "unc/testB/3"},
        {"image_id": 42, "category_id": 7, "bbox": [1.0, 2.0, 2.0, 3.0], "score": 1.0, "box_format": "xywh",
         "expression": "mug"},
    ]


def test_coco_results_refuse_what_they_cannot_say():
    with pytest.raises(LGRNetError, match="prediction 0: image 'kitchen.jpg' is not a COCO file name"):
        to_coco_results([{"image": "kitchen.jpg", "box": [1, 2, 3, 4]}])
    with pytest.raises(LGRNetError, match="prediction 1: box_format 'xywh', expected 'xyxy'"):
        to_coco_results([{"image_id": 1, "box": [1, 2, 3, 4]}, {"image_id": 1, "box": [1, 2, 3, 4],
                                                                "box_format": "xywh"}])
    with pytest.raises(LGRNetError, match="no box"):
        box_xyxy({"image_id": 1})


class FakeDetections:
    """Stands in for supervision.Detections: keeps what it was built with."""

    def __init__(self, xyxy, class_id, data):
        self.xyxy, self.class_id, self.data = xyxy, class_id, data


def test_detections_built_lazily(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", types.SimpleNamespace(Detections=FakeDetections))
    prediction = types.SimpleNamespace(expression="left cup", box_xyxy=(1.0, 2.0, 30.5, 40.25))
    detections = to_detections([prediction, {"expression": "plate", "box": [5, 6, 7, 8], "box_format": "xyxy"}])
    assert detections.xyxy.dtype == np.float32
    np.testing.assert_array_equal(detections.xyxy, [[1.0, 2.0, 30.5, 40.25], [5, 6, 7, 8]])
    assert list(detections.data["expression"]) == ["left cup", "plate"]
    assert detections.class_id.tolist() == [0, 0]
    assert to_detections([]).xyxy.shape == (0, 4)
    monkeypatch.setitem(sys.modules, "supervision", None)  # not installed
    with pytest.raises(LGRNetError, match="needs supervision: pip install supervision"):
        to_detections([prediction])


def test_detections_with_supervision_itself():
    sv = pytest.importorskip("supervision")
    detections = to_detections([{"expression": "dog", "box_xyxy": [1, 2, 3, 4]}])
    assert isinstance(detections, sv.Detections) and len(detections) == 1
    np.testing.assert_array_equal(detections.xyxy, [[1, 2, 3, 4]])


@pytest.mark.slow  # builds a tiny model folder (seconds to half a minute on a busy CPU)
def test_predict_format_coco(checkpoint, tmp_path, capsys):
    import json

    from PIL import Image

    from lgrnet.cli import main

    for name, colour in (("COCO_train2014_000000000154.jpg", (200, 30, 30)), ("kitchen.jpg", (30, 200, 30))):
        Image.new("RGB", (64, 48), colour).save(tmp_path / name)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in (
        {"image": "COCO_train2014_000000000154.jpg", "expression": "red thing", "id": "a"},
        {"image": "kitchen.jpg", "expression": "green thing", "image_id": 42},
        {"image": "kitchen.jpg", "expression": "no id"},
    )) + "\n")
    common = ["predict", "--checkpoint", str(checkpoint), "--input", str(requests), "--no-progress",
              "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "preds.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert main([*common, "--output", str(tmp_path / "results.json"), "--format", "coco"]) == 1  # one skipped
    assert "requests.jsonl:3: skipped: image 'kitchen.jpg' is not a COCO file name" in capsys.readouterr().err
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["image_id"], r["expression"], r["box_format"], r["score"]) for r in results] == [
        (154, "red thing", "xywh", 1.0), (42, "green thing", "xywh", 1.0)]
    for result, row in zip(results, rows):
        x1, y1, x2, y2 = row["box_xyxy"]
        assert result["bbox"] == [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)]
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "kitchen.jpg"), "--text",
                 "x", "--format", "coco"]) == 2
    assert "--format coco goes with --input and --output" in capsys.readouterr().err
