"""Losses: L1 and GIoU against torchvision, the alignment loss against a direct computation, the criterion."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from lgrnet.config import LossConfig
from lgrnet.model.losses import LGRNetCriterion, alignment_loss, giou_loss, l1_loss


def boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat((torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05), 1)


def test_giou_loss_equals_torchvision_pairwise_diagonal():
    pred, gt = boxes(6, 0), boxes(6, 1)
    pairwise = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy"))
    assert torch.allclose(giou_loss(pred, gt), (1 - pairwise.diagonal()).mean(), atol=1e-6)
    assert giou_loss(gt, gt) == pytest.approx(0.0, abs=1e-5)  # torchvision adds eps 1e-7


def test_l1_sums_coordinates_and_averages_samples():
    pred, gt = boxes(4, 2), boxes(4, 3)
    direct = sum(float((pred[i] - gt[i]).abs().sum()) for i in range(4)) / 4
    assert l1_loss(pred, gt).item() == pytest.approx(direct, rel=1e-6)


def direct_infonce(obj: torch.Tensor, sent: torch.Tensor, scale: float, symmetric: bool) -> float:
    n = obj.shape[0]
    sims = [[scale * float(obj[i] @ sent[j]) for j in range(n)] for i in range(n)]
    o2s = -sum(sims[i][i] - math.log(sum(math.exp(s) for s in sims[i])) for i in range(n)) / n
    if not symmetric:
        return o2s
    s2o = -sum(sims[i][i] - math.log(sum(math.exp(sims[j][i]) for j in range(n))) for i in range(n)) / n
    return (o2s + s2o) / 2


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row divided by its Euclidean length, written out (not F.normalize)."""
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def affine(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    return x @ linear.weight.detach().t() + linear.bias.detach()


def test_alignment_normalises_object_embeddings_of_any_norm():
    """Spec 9: f_obj = L2norm(class_proj(state)), S = exp(logit_scale) f_obj f_sent^T, L = (CE(S) + CE(S^T)) / 2.
    Prediction-token states whose projections have norms far from 1 (x0.01 and x40): an unnormalised f_obj gives a
    very different loss."""
    b, d = 4, 8
    g = torch.Generator().manual_seed(5)
    states = torch.randn(2, b, d, generator=g) * torch.tensor([0.01, 40.0, 1.0, 7.0])[None, :, None]
    sentence = unit_rows(torch.randn(b, d, generator=g))
    crit = LGRNetCriterion(LossConfig(aux_loss=False, align_weight=1.0), d)
    with torch.no_grad():
        crit.object_proj.weight.copy_(torch.randn(d, d, generator=g))
        crit.object_proj.bias.copy_(torch.randn(d, generator=g) * 0.001)
        crit.logit_scale.fill_(math.log(1 / 0.05))
    projected = affine(states[-1], crit.object_proj)
    norms = projected.norm(dim=-1)
    assert norms.min() < 0.5 and norms.max() > 20  # far from unit length on both sides
    out = crit(torch.stack([boxes(b, 0), boxes(b, 1)]), boxes(b, 2), states, sentence)
    expected = direct_infonce(unit_rows(projected), sentence, 1 / 0.05, symmetric=True)
    assert out["align"].item() == pytest.approx(expected, rel=1e-5)
    # The loss a forgotten normalisation would give (torch's cross-entropy: the logits reach ~10^4) is far away.
    logits, labels = 20.0 * projected @ sentence.t(), torch.arange(b)
    unnormalised = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(
        logits.t(), labels)) / 2
    assert abs(unnormalised.item() - expected) > 1.0


def test_sentence_embedding_is_the_normalised_projection_of_the_raw_cls():
    """Spec 9: f_sent = L2norm(bertcls_proj(h_cls_raw)), the other input of the alignment loss."""
    from lgrnet.model.tfe import TextualFeatureExtender

    torch.manual_seed(0)
    tfe = TextualFeatureExtender(text_dim=12, hidden_dim=8)
    raw_cls = torch.randn(3, 12) * torch.tensor([[0.01], [30.0], [1.0]])
    projected = affine(raw_cls, tfe.sentence_proj)
    assert (projected.norm(dim=-1) - 1).abs().min() > 0.1
    torch.testing.assert_close(tfe.sentence_embedding(raw_cls), unit_rows(projected), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_alignment_loss_equals_direct_computation(symmetric):
    g = torch.Generator().manual_seed(0)
    obj = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    sent = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    got = alignment_loss(obj, sent, logit_scale, symmetric=symmetric)
    assert got.item() == pytest.approx(direct_infonce(obj, sent, 1 / 0.07, symmetric), rel=1e-5)


def test_alignment_gather_without_process_group_is_local():
    obj = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    sent = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(2.0)
    assert torch.equal(alignment_loss(obj, sent, scale, gather=True), alignment_loss(obj, sent, scale))


def test_criterion_terms_and_weights():
    n, b, d = 3, 4, 8
    layer_boxes = torch.stack([boxes(b, i) for i in range(n)])
    target = boxes(b, 10)
    states = torch.randn(n, b, d)
    sentence = torch.nn.functional.normalize(torch.randn(b, d), dim=-1)
    cfg = LossConfig(l1_weight=2.0, giou_weight=3.0, align_weight=0.5)
    crit = LGRNetCriterion(cfg, d)
    assert crit.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    out = crit(layer_boxes, target, states, sentence)
    assert set(out) == {"l1", "giou", "l1_0", "giou_0", "l1_1", "giou_1", "align", "loss"}
    assert out["l1_0"] == l1_loss(layer_boxes[0], target)
    expected = sum(2 * out[f"l1{s}"] + 3 * out[f"giou{s}"] for s in ("", "_0", "_1")) + 0.5 * out["align"]
    assert torch.allclose(out["loss"], expected)
    # The alignment term from the spec's formula (object_proj, L2 normalisation, exp(logit_scale), symmetric CE).
    expected_align = direct_infonce(unit_rows(affine(states[-1], crit.object_proj)), sentence, 1 / 0.07, True)
    assert out["align"].item() == pytest.approx(expected_align, rel=1e-5)


def test_criterion_switches():
    n, b, d = 2, 3, 8
    layer_boxes, target = torch.stack([boxes(b, i) for i in range(n)]), boxes(b, 9)
    states, sentence = torch.randn(n, b, d), torch.nn.functional.normalize(torch.randn(b, d), dim=-1)
    no_aux = LGRNetCriterion(LossConfig(aux_loss=False, align=False), d)
    assert no_aux.object_proj is None and no_aux.logit_scale is None and list(no_aux.parameters()) == []
    out = no_aux(layer_boxes, target, states, None)
    assert set(out) == {"l1", "giou", "loss"}
    all_layers = LGRNetCriterion(LossConfig(align_all_layers=True, align_symmetric=False), d)
    out = all_layers(layer_boxes, target, states, sentence)
    assert {"align", "align_0"} <= set(out)
    assert torch.allclose(out["align_0"], alignment_loss(all_layers.object_embeddings(states[0]), sentence,
                                                         all_layers.logit_scale, symmetric=False))
