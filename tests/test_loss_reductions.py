"""Loss reductions on shapes where a wrong axis shows: the L1 loss on a batch of 3 (with 4 box coordinates a
batch of 4 hides a sum over the wrong axis), unit-norm object embeddings along the feature axis of [B, D] and
[N, B, D] states, the criterion's float32 total for bfloat16 predictions (mixed precision), and the alignment loss
symmetric by default."""

from __future__ import annotations

import math

import pytest
import torch

from lgrnet.config import LossConfig
from lgrnet.model.losses import LGRNetCriterion, alignment_loss, l1_loss


def test_l1_sums_the_coordinates_and_averages_a_batch_of_three():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.3, 0.4], [0.9, 0.9, 0.1, 0.1]])
    gt = torch.tensor([[0.5, 0.4, 0.2, 0.1], [0.2, 0.2, 0.1, 0.4], [0.5, 0.9, 0.1, 0.3]])
    # Per-sample sums of |pred - gt|: 0.2, 0.3, 0.6; their mean 1.1 / 3.
    assert l1_loss(pred, gt).item() == pytest.approx(1.1 / 3, rel=1e-6)


def test_object_embeddings_are_unit_rows_of_the_projection():
    torch.manual_seed(0)
    crit = LGRNetCriterion(LossConfig(), 6)
    states = torch.randn(3, 5, 6) * 10  # [N layers, B, D]
    projected = states @ crit.object_proj.weight.detach().t() + crit.object_proj.bias.detach()
    expected = projected / projected.pow(2).sum(-1, keepdim=True).sqrt()
    with torch.no_grad():
        torch.testing.assert_close(crit.object_embeddings(states), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(crit.object_embeddings(states[1]), expected[1], atol=1e-6, rtol=1e-5)


def test_criterion_total_is_float32_for_bfloat16_predictions():
    torch.manual_seed(0)
    crit = LGRNetCriterion(LossConfig(align=False), 8)
    layer_boxes = (torch.rand(2, 3, 4) * 0.3 + 0.3).to(torch.bfloat16)
    target = torch.rand(3, 4) * 0.3 + 0.3
    out = crit(layer_boxes, target, torch.randn(2, 3, 8), None)
    assert out["loss"].dtype == torch.float32
    expected = sum(l1_loss(b, target) + out[k] for b, k in zip(layer_boxes, ["giou_0", "giou"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_alignment_loss_is_symmetric_unless_told_otherwise():
    """Without `symmetric`, the mean of the object->sentence and sentence->object cross-entropies (spec 9)."""
    obj = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sent = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # S = obj @ sent^T = [[0.6, 1.0], [0.8, 0.0]] (scale 1). Rows: -log softmax of the diagonal.
    o2s = (-(0.6 - math.log(math.exp(0.6) + math.exp(1.0))) - (0.0 - math.log(math.exp(0.8) + 1.0))) / 2
    s2o = (-(0.6 - math.log(math.exp(0.6) + math.exp(0.8))) - (0.0 - math.log(math.exp(1.0) + 1.0))) / 2
    assert alignment_loss(obj, sent, torch.tensor(0.0)).item() == pytest.approx((o2s + s2o) / 2, rel=1e-6)
    assert alignment_loss(obj, sent, torch.tensor(0.0), symmetric=False).item() == pytest.approx(o2s, rel=1e-6)
