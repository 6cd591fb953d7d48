"""Metrics against hand-computed IoUs (spec section 12), degenerate boxes, the spatial split, original pixels."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.ops import box_iou

from lgrnet.data.batch import Batch, SampleMeta
from lgrnet.engine.distributed import DistInfo
from lgrnet.engine.evaluate import evaluate
from lgrnet.engine.metrics import MetricAccumulator, canvas_iou, paired_iou


def xyxy_to_cxcywh(b):
    x1, y1, x2, y2 = b
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ([0.25, 0.25, 0.75, 0.75], [0.25, 0.25, 0.75, 0.75], 1.0),  # identical
        ([0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75], 0.0625 / 0.4375),  # quarter overlap: 1/7
        ([0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0], 0.5),  # exactly 0.5
        ([0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], 0.0),  # disjoint
        ([0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], 0.0),  # touching edge
        ([0.3, 0.3, 0.3, 0.6], [0.2, 0.2, 0.6, 0.6], 0.0),  # zero-width prediction
        ([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3], 0.0),  # both degenerate: 0 / 1e-16, not NaN
    ],
)
def test_canvas_iou_hand_computed(pred, gt, expected):
    iou = canvas_iou(torch.tensor([xyxy_to_cxcywh(pred)]), torch.tensor([xyxy_to_cxcywh(gt)]))
    assert not torch.isnan(iou).any()
    assert iou.item() == pytest.approx(expected, abs=1e-6)


def test_prediction_is_clamped_to_canvas_but_ground_truth_is_not():
    # pred (cx, cy, w, h) = (0, 0.5, 1, 1): corners x in [-0.5, 0.5]; clamped to [0, 0.5] it equals the gt.
    pred = torch.tensor([[0.0, 0.5, 1.0, 1.0]])
    gt = torch.tensor([[0.25, 0.5, 0.5, 1.0]])
    assert canvas_iou(pred, gt).item() == pytest.approx(1.0)
    # Without the clamp it would be 0.5 (area 1 vs 0.5): the clamp is what the reference does.
    assert paired_iou(torch.tensor([[-0.5, 0, 0.5, 1]]), torch.tensor([[0.0, 0, 0.5, 1]])).item() == pytest.approx(0.5)
    # A ground truth sticking out of the canvas is not clamped: pred [0,0,1,1] vs gt [0,0,2,1] -> 0.5.
    assert canvas_iou(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([[1.0, 0.5, 2.0, 1.0]])).item() == \
        pytest.approx(0.5)


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g)
    wh = torch.rand(50, 2, generator=g) + 0.01
    a = torch.cat([xy, xy + wh], 1)
    xy2 = torch.rand(50, 2, generator=g)
    b = torch.cat([xy2, xy2 + torch.rand(50, 2, generator=g) + 0.01], 1)
    torch.testing.assert_close(paired_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6, rtol=1e-6)


def test_accumulator_percentages_and_spatial_split():
    acc = MetricAccumulator()
    # IoUs 1.0, 0.5 (hit@0.5, miss@0.75), 0.8, 0.1; spatial flags T, T, F, F.
    acc.update(torch.tensor([1.0, 0.5, 0.8, 0.1]), torch.tensor([1.0, 0.4, 0.8, 0.9]), [True, True, False, False])
    acc.update(torch.tensor([0.49999]), torch.tensor([0.75]), [False])
    m = acc.compute()
    assert m["count"] == 5 and m["spatial_count"] == 2 and m["non_spatial_count"] == 3
    assert m["acc50"] == pytest.approx(60.0)  # 1.0, 0.5, 0.8
    assert m["acc75"] == pytest.approx(40.0)  # 1.0, 0.8
    assert m["miou"] == pytest.approx(100 * (1.0 + 0.5 + 0.8 + 0.1 + 0.49999) / 5)
    assert m["acc50_spatial"] == pytest.approx(100.0)
    assert m["acc50_non_spatial"] == pytest.approx(100 / 3)
    assert m["orig_acc50"] == pytest.approx(80.0)  # 1.0, 0.8, 0.9, 0.75
    assert m["orig_acc75"] == pytest.approx(80.0)
    assert m["orig_acc50_spatial"] == pytest.approx(50.0)
    assert m["orig_acc50_non_spatial"] == pytest.approx(100.0)


def test_empty_groups_give_no_figure_not_zero_or_nan():
    acc = MetricAccumulator()
    acc.update(torch.tensor([0.9]), torch.tensor([0.9]), [False])
    m = acc.compute()
    # No spatial expression was seen: no spatial accuracy (None, JSON null), not a false 0%.
    assert m["acc50_spatial"] is None and m["orig_acc50_spatial"] is None
    assert m["acc50_non_spatial"] == 100.0 and m["orig_acc50_non_spatial"] == 100.0
    assert all(not math.isnan(v) for v in m.values() if v is not None)
    acc.update(torch.tensor([0.2]), torch.tensor([0.7]), [True])
    m = acc.compute()
    assert m["acc50_spatial"] == 0.0 and m["orig_acc50_spatial"] == 100.0  # now one spatial sample: a real 0%
    empty = MetricAccumulator().compute()
    assert empty["acc50"] == 0.0 and empty["count"] == 0
    assert empty["acc50_spatial"] is None and empty["acc50_non_spatial"] is None


class _FixedModel(torch.nn.Module):
    """Returns given canvas boxes: isolates evaluate() from the network."""

    def __init__(self, boxes: torch.Tensor):
        super().__init__()
        self.boxes = boxes
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, **kwargs):
        return SimpleNamespace(pred_boxes=self.boxes[: images.shape[0]])


def _batch() -> Batch:
    # One 200x100 image letterboxed into a 100 canvas: scale 0.5, centred vertically (offset dy = 25).
    meta = [
        SampleMeta(id="a", expression="the dog on the left", image="x.jpg", original_size=(200, 100),
                   scale=(0.5, 0.5), offset=(0.0, 25.0), canvas_size=100, original_box=(0.0, 0.0, 100.0, 100.0)),
        SampleMeta(id="b", expression="a red car", image="x.jpg", original_size=(200, 100),
                   scale=(0.5, 0.5), offset=(0.0, 25.0), canvas_size=100, original_box=(100.0, 0.0, 200.0, 50.0)),
    ]
    # Canvas ground truths: a -> x [0, 50], y [25, 75]; b -> x [50, 100], y [25, 50].
    boxes = torch.tensor([[0.25, 0.5, 0.5, 0.5], [0.75, 0.375, 0.5, 0.25]])
    return Batch(images=torch.zeros(2, 3, 100, 100), image_mask=torch.zeros(2, 100, 100, dtype=torch.bool),
                 input_ids=torch.zeros(2, 4, dtype=torch.int64), attention_mask=torch.ones(2, 4, dtype=torch.int64),
                 boxes=boxes, meta=meta)


def test_evaluate_reports_canvas_and_original_pixels_and_predictions():
    batch = _batch()
    # a: exact; b: predicted x [50, 100], y [25, 75] on canvas -> original y [0, 100]: IoU 0.5 on both spaces.
    pred = torch.tensor([[0.25, 0.5, 0.5, 0.5], [0.75, 0.5, 0.5, 0.5]])
    metrics, preds = evaluate(_FixedModel(pred), [batch], DistInfo(), collect_predictions=True)
    assert metrics["acc50"] == pytest.approx(100.0) and metrics["acc75"] == pytest.approx(50.0)
    assert metrics["miou"] == pytest.approx(75.0)
    assert metrics["orig_miou"] == pytest.approx(75.0)
    assert metrics["acc50_spatial"] == pytest.approx(100.0) and metrics["spatial_count"] == 1
    assert [p["id"] for p in preds] == ["a", "b"]
    assert preds[0]["box"] == pytest.approx([0.0, 0.0, 100.0, 100.0], abs=0.01)
    assert preds[1]["box"] == pytest.approx([100.0, 0.0, 200.0, 100.0], abs=0.01)
    assert preds[1]["iou"] == pytest.approx(0.5, abs=1e-4)


def test_evaluate_original_pixels_clamp_to_the_image_not_the_canvas():
    batch = _batch()
    # a predicted over the whole canvas: original y would be [-50, 150]; clamped to the image [0, 100],
    # x [0, 200]: IoU with a's box (100x100) = 0.5 in pixels, but on the canvas 2500 / 10000 = 0.25.
    pred = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.75, 0.375, 0.5, 0.25]])
    metrics, _ = evaluate(_FixedModel(pred), [batch], DistInfo())
    assert metrics["miou"] == pytest.approx(100 * (0.25 + 1.0) / 2, abs=1e-3)
    assert metrics["orig_miou"] == pytest.approx(100 * (0.5 + 1.0) / 2, abs=1e-3)


@pytest.mark.parametrize(("spatial_match", "spatial_count"), [("substring", 2), ("word", 1)])
def test_evaluate_spatial_split_follows_the_switch(spatial_match, spatial_count):
    # "the laptop on a desk" is spatial only under the reference's substring rule ("top" inside "laptop").
    batch = _batch()
    batch.meta[1] = dataclasses.replace(batch.meta[1], expression="the laptop on a desk")
    pred = torch.tensor([[0.25, 0.5, 0.5, 0.5], [0.9, 0.9, 0.1, 0.1]])  # a hit, b a miss (IoU 0)
    metrics, preds = evaluate(_FixedModel(pred), [batch], DistInfo(), collect_predictions=True,
                              spatial_match=spatial_match)
    assert metrics["spatial_count"] == spatial_count and metrics["non_spatial_count"] == 2 - spatial_count
    assert [p["spatial"] for p in preds] == [True, spatial_count == 2]
    assert metrics["acc50_spatial"] == pytest.approx(100.0 / spatial_count)


class _WholeCanvasModel(torch.nn.Module):
    """Predicts the whole canvas for every sample: a square image's IoU is then its box's share of the image."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, **kwargs):
        return SimpleNamespace(pred_boxes=torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(images.shape[0], 4))


@pytest.fixture
def split_file(tmp_path):
    """Four records on 100x100 images: box shares of the image 1.0, 0.6, 0.1, 0.6; splits val, val, test, none."""
    import json

    from PIL import Image

    Image.new("RGB", (100, 100), (90, 120, 200)).save(tmp_path / "scene.png")
    rows = [("full", "val", [0, 0, 100, 100]), ("most", "val", [0, 0, 60, 100]),
            ("small", "test", [0, 0, 20, 50]), ("free", None, [40, 0, 100, 100])]
    lines = [json.dumps({"id": i, "image": "scene.png", "expression": "the thing", "box": box,
                         **({"split": split} if split else {})}) for i, split, box in rows]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_split_reads_the_split_and_evaluates_it(split_file):
    from tiny_configs import tiny_twin

    from lgrnet.config import load_config
    from lgrnet.engine.evaluate import evaluate_split
    from lgrnet.errors import DataError

    config = load_config(tiny_twin("lgrnet-tiny"), ["data.format=jsonl", f"data.root={split_file}",
                                                    "data.num_workers=0", "train.batch_size=3"])
    model = _WholeCanvasModel()
    whole = evaluate_split(model, config, collect_predictions=True)  # the file holds two splits: named after it
    assert whole.split == "records" and whole.metrics["count"] == 4
    assert whole.metrics["acc50"] == pytest.approx(75.0) and whole.metrics["acc75"] == pytest.approx(25.0)
    assert whole.metrics["miou"] == pytest.approx(100 * (1.0 + 0.6 + 0.1 + 0.6) / 4, abs=1e-3)
    assert [p["id"] for p in whole.predictions] == ["full", "most", "small", "free"]
    assert whole.predictions[1]["box"] == pytest.approx([0.0, 0.0, 100.0, 100.0], abs=0.01)
    val = evaluate_split(model, config, "val")  # the val records and those without a split key
    assert val.split == "val" and val.metrics["count"] == 3 and val.predictions is None
    assert val.metrics["miou"] == pytest.approx(100 * (1.0 + 0.6 + 0.6) / 3, abs=1e-3)
    first = evaluate_split(model, config, "val", limit=2, batch_size=1)
    assert first.metrics["count"] == 2 and first.metrics["miou"] == pytest.approx(80.0, abs=1e-3)
    assert evaluate_split(model, config, "train").metrics["count"] == 1  # only the record without a split key
    split_file.write_text("".join(line + "\n" for line in split_file.read_text().splitlines()[:3]))
    with pytest.raises(DataError, match="--split train: .*records.jsonl has no records of split 'train'"):
        evaluate_split(model, config, "train")
