"""The generalized REC head (model.grec): matching, losses, outputs, and target sets through the data pipeline."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from PIL import Image
from tiny_configs import tiny_twin

from lgrnet.config import GrecConfig, LossConfig, apply_overrides
from lgrnet.data.dataset import Item, collate
from lgrnet.data.readers.jsonl import read_jsonl
from lgrnet.data.records import NO_BOX, Record
from lgrnet.data.transforms import EvalTransform
from lgrnet.errors import DataError, LGRNetError
from lgrnet.model.builder import build_model
from lgrnet.model.grec import GrecCriterion, match, select_boxes
from lgrnet.model.losses import coord_loss


def _model(*overrides: str):
    cfg = apply_overrides(tiny_twin("lgrnet-tiny"), list(overrides))
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.loss).eval()


def _inputs(b: int = 3):
    torch.manual_seed(1)
    return (torch.randn(b, 3, 128, 128), torch.zeros(b, 128, 128, dtype=torch.bool),
            torch.randint(1000, 2000, (b, 8)), torch.ones(b, 8, dtype=torch.long))


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two (cx, cy, w, h) boxes, written out."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def test_matching_is_the_cheapest_one_to_one_assignment():
    cfg = GrecConfig(num_queries=4)
    torch.manual_seed(3)
    boxes = torch.rand(1, 2, 4, 4) * 0.4 + 0.3  # [N=1, B=2, K=4]
    logits = torch.randn(1, 2, 4)
    targets = torch.tensor([[[0.4, 0.5, 0.2, 0.3], [0.6, 0.4, 0.3, 0.2], [0.5, 0.5, 0.1, 0.1]],
                            [[0.45, 0.55, 0.25, 0.2], [0, 0, 0, 0], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    (bi, ki, ti), = match(boxes, logits, targets, valid, cfg)

    def cost(b: int, k: int, t: int) -> float:
        p, g = boxes[0, b, k].tolist(), targets[b, t].tolist()
        l1 = sum(abs(x - y) for x, y in zip(p, g))
        prob = 1 / (1 + math.exp(-float(logits[0, b, k])))
        return cfg.match_l1 * l1 - cfg.match_giou * _giou(p, g) - cfg.match_score * prob

    for b, num_targets in ((0, 3), (1, 1)):
        best = min(itertools.permutations(range(4), num_targets),
                   key=lambda tokens: sum(cost(b, k, t) for t, k in enumerate(tokens)))
        got = {int(t): int(k) for bb, k, t in zip(bi, ki, ti) if bb == b}
        assert got == dict(enumerate(best))
    assert len(bi) == 4  # 3 + 1 targets, each matched once


def test_one_target_per_sample_gives_the_classic_box_losses():
    loss_cfg = LossConfig(align=False)
    criterion = GrecCriterion(loss_cfg, GrecConfig(num_queries=1), hidden_dim=8)
    boxes = torch.tensor([[[[0.5, 0.5, 0.2, 0.2]], [[0.3, 0.6, 0.3, 0.1]]]])  # [N=1, B=2, K=1, 4]
    logits = torch.tensor([[[0.3], [-1.2]]])
    targets = torch.tensor([[[0.45, 0.5, 0.3, 0.2]], [[0.3, 0.5, 0.2, 0.2]]])
    losses = criterion.forward_sets(boxes, logits, targets, torch.ones(2, 1, dtype=torch.bool),
                                    torch.zeros(1, 2, 1, 8), None)
    pairs = [(boxes[0, b, 0].tolist(), targets[b, 0].tolist()) for b in range(2)]
    assert float(losses["l1"]) == pytest.approx(sum(sum(abs(x - y) for x, y in zip(p, g)) for p, g in pairs) / 2)
    assert float(losses["giou"]) == pytest.approx(sum(1 - _giou(p, g) for p, g in pairs) / 2, abs=1e-6)
    # Every token matched: the score loss is -log(sigmoid(logit)) averaged over the tokens.
    assert float(losses["score"]) == pytest.approx((math.log1p(math.exp(-0.3)) + math.log1p(math.exp(1.2))) / 2)


def test_no_target_samples_only_teach_the_scores():
    criterion = GrecCriterion(LossConfig(align=True), GrecConfig(num_queries=3), hidden_dim=8)
    boxes = torch.rand(2, 2, 3, 4, requires_grad=True)
    logits = torch.tensor([[[0.5, -1.0, 2.0], [0.0, 0.1, -0.3]]] * 2)
    losses = criterion.forward_sets(boxes, logits, torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.bool),
                                    torch.randn(2, 2, 3, 8), torch.randn(2, 8))
    expected = sum(math.log1p(math.exp(v)) for v in logits[0].flatten().tolist()) / 6  # -log(1 - sigmoid)
    assert float(losses["score"]) == pytest.approx(expected, rel=1e-6)
    assert all(float(losses[k].detach()) == 0.0 for k in ("l1", "giou", "align"))
    losses["loss"].backward()
    assert boxes.grad is None or float(boxes.grad.abs().sum()) == 0.0


def test_coordinate_loss_takes_the_nearest_target_centre():
    coord = torch.tensor([[0.2, 0.2], [0.9, 0.1], [0.5, 0.5]])
    targets = torch.tensor([[[0.8, 0.8, 0.1, 0.1], [0.25, 0.1, 0.1, 0.1]],
                            [[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]],
                            [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    # Sample 0: nearest is (0.25, 0.1) at 0.05 + 0.1; sample 1: (0.5, 0.5) at 0.4 + 0.4; sample 2 has no target.
    assert float(coord_loss(coord, targets, valid)) == pytest.approx((0.15 + 0.8) / 2)


def test_generalized_outputs_and_the_top_box():
    model = _model("model.grec.enabled=true", "model.grec.num_queries=4")
    with torch.no_grad():
        out = model(*_inputs())
    n = model.config.num_layers
    assert out.token_boxes.shape == (n, 3, 4, 4) and out.token_logits.shape == (n, 3, 4)
    top = out.token_logits[-1].argmax(dim=-1)
    assert torch.equal(out.pred_boxes, out.token_boxes[-1, torch.arange(3), top])
    assert torch.equal(out.layer_boxes[-1], out.pred_boxes)
    assert any(k.startswith("grec.") for k in model.state_dict())
    assert model.visual_pos.num_embeddings == 4 + sum(h * w for h, w in model.token_shapes)


def test_tokens_start_from_different_identities():
    model = _model("model.grec.enabled=true")
    with torch.no_grad():
        out = model(*_inputs(1))
    boxes = out.token_boxes[-1, 0]
    assert all(not torch.allclose(boxes[i], boxes[j]) for i, j in itertools.combinations(range(len(boxes)), 2))


def test_classic_model_has_no_generalized_parts_and_rejects_sets():
    model = _model()
    assert not any(k.startswith("grec.") for k in model.state_dict())
    with torch.no_grad():
        out = model(*_inputs(2))
    assert out.token_boxes is None and out.token_logits is None
    sets = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]], [[0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]]])
    with pytest.raises(LGRNetError, match="model.grec.enabled"):
        model(*_inputs(2), target_boxes=sets, target_valid=torch.tensor([[True, True], [True, False]]))
    # Sets of exactly one box are the classic targets.
    one = model(*_inputs(2), target_boxes=sets[:, :1], target_valid=torch.ones(2, 1, dtype=torch.bool))
    classic = model(*_inputs(2), target_boxes=sets[:, 0])
    assert torch.equal(one.loss, classic.loss)


def test_grec_model_trains_on_a_mixed_batch():
    model = _model("model.grec.enabled=true", "loss.coord_weight=1.0").train()
    targets = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]], [[0.3, 0.3, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]],
                            [[0, 0, 0, 0], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, False], [True, True], [False, False]])
    out = model(*_inputs(), target_boxes=targets, target_valid=valid)
    assert {"l1", "giou", "score", "align", "coord", "l1_0", "score_0"} <= set(out.loss_dict)
    out.loss.backward()
    assert model.grec.queries.weight.grad is not None and model.grec.score_head.weight.grad is not None


def test_select_boxes_thresholds_and_sorts():
    boxes = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    logits = torch.tensor([[0.0, 2.0, -2.0]])  # probabilities 0.5, 0.88, 0.12
    (kept, scores), = select_boxes(boxes, logits, 0.5)
    assert kept.tolist() == [boxes[0, 1].tolist(), boxes[0, 0].tolist()]
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 0.5])
    (kept, scores), = select_boxes(boxes, logits, 0.9)
    assert kept.shape == (0, 4) and scores.numel() == 0


def test_select_boxes_suppresses_duplicates_above_the_iou():
    # A = (0, 0, 10, 10); A2 = (0, 0, 10, 11) overlaps it by 100 / 110 = 0.909; FAR is disjoint from both.
    a, a2, far = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 60.0, 60.0]
    boxes = torch.tensor([[a2, far, a]])
    logits = torch.tensor([[1.0, 0.5, 2.0]])  # A first, then A2, then FAR
    (kept, scores), = select_boxes(boxes, logits, 0.5, nms_iou=0.9)
    assert kept.tolist() == [a, far]  # A2 (0.909 > 0.9) dropped, the order by score kept
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-0.5))])
    (kept, _), = select_boxes(boxes, logits, 0.5, nms_iou=0.95)
    assert kept.tolist() == [a, a2, far]  # 0.909 is not above 0.95
    (kept, _), = select_boxes(boxes, logits, 0.5)
    assert kept.tolist() == [a, a2, far]  # no suppression without nms_iou
    (kept, _), = select_boxes(boxes, logits, 0.7, nms_iou=0.95)
    assert kept.tolist() == [a, a2]  # FAR (0.62) is under the threshold whatever the suppression
    (kept, _), = select_boxes(boxes, torch.tensor([[1.0, 0.5, -9.0]]), 0.5, nms_iou=0.5)
    assert kept.tolist() == [a2, far]  # A, under the threshold, suppresses nothing


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_nms_iou_outside_its_range_is_refused(value):
    with pytest.raises(LGRNetError, match=r"model.grec.nms_iou must be null or a number in \(0, 1\]"):
        _model("model.grec.enabled=true", f"model.grec.nms_iou={value}")
    _model("model.grec.enabled=true", "model.grec.nms_iou=1.0")  # 1.0: only identical boxes are duplicates


def _write(tmp_path, lines: list[dict]) -> list[Record]:
    Image.new("RGB", (200, 100), "gray").save(tmp_path / "a.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"image": "a.png", **line}) + "\n" for line in lines))
    return read_jsonl(path)


def test_jsonl_target_sets(tmp_path):
    records = _write(tmp_path, [
        {"expression": "the circle", "box": [10, 10, 20, 20]},
        {"expression": "both squares", "boxes": [[1, 2, 3, 4], [50, 60, 70, 80]]},
        {"expression": "the purple star", "boxes": []},
        {"expression": "the one", "box": [1, 2, 3, 4], "boxes": [[1, 2, 3, 4]], "kind": "single"},
    ])
    assert records[0].boxes is None and records[0].targets == ((10.0, 10.0, 20.0, 20.0),)
    assert records[1].boxes == ((1.0, 2.0, 3.0, 4.0), (50.0, 60.0, 70.0, 80.0)) and records[1].box == (1, 2, 3, 4)
    assert records[2].boxes == () and records[2].box == NO_BOX and records[2].targets == ()
    assert records[3].boxes == ((1.0, 2.0, 3.0, 4.0),) and records[3].source["kind"] == "single"


@pytest.mark.parametrize("line, message", [
    ({"expression": "x", "boxes": [[1, 2, 3]]}, "'boxes' must be"),
    ({"expression": "x", "boxes": "none"}, "'boxes' must be a list"),
    ({"expression": "x", "box": [1, 2, 3, 4], "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]]}, "exactly \\[box\\]"),
    ({"expression": "x"}, "missing key\\(s\\) box"),
])
def test_jsonl_bad_target_sets(tmp_path, line, message):
    with pytest.raises(DataError, match=message):
        _write(tmp_path, [line])


def test_transform_and_collate_carry_the_whole_set(tmp_path):
    image = Image.new("RGB", (200, 100), "gray")
    boxes = [(10.0, 10.0, 50.0, 40.0), (120.0, 30.0, 190.0, 90.0)]
    transform = EvalTransform(128)
    sample = transform(image, "both", boxes=boxes)
    for row, box in zip(sample.boxes, boxes):  # each row is what the one-box transform gives that box
        assert row.tolist() == transform(image, "both", box).box.tolist()
    empty = transform(image, "none", boxes=[])
    assert empty.boxes.shape == (0, 4) and empty.box is None
    assert torch.equal(empty.image, sample.image)
    classic = transform(image, "one", boxes[0])
    assert classic.boxes is None

    def item(s):
        return Item(s.image, s.mask, s.box, [101, 102], [1, 1], None, s.boxes)

    batch = collate([item(sample), item(empty), item(classic)])
    assert batch.target_boxes.shape == (3, 2, 4)
    assert batch.target_valid.tolist() == [[True, True], [False, False], [True, False]]
    assert torch.equal(batch.target_boxes[0], sample.boxes) and torch.equal(batch.target_boxes[2, 0], classic.box)
    assert batch.boxes[1].tolist() == [0.0] * 4
    assert set(batch.model_inputs()) >= {"target_boxes", "target_valid"}
    plain = collate([item(classic)])
    assert plain.target_boxes is None and "target_valid" not in plain.model_inputs()
