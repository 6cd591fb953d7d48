"""The dense region loss (loss.region_weight, beyond the paper): which tokens count as the target's, its value
against a direct computation, padding, and its place in the model (no parameters, outputs unchanged, off by default)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import build, make_inputs

from lgrnet.config import LossConfig
from lgrnet.errors import LGRNetError
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.losses import region_loss, target_tokens, token_centres


def test_token_centres_follow_the_maps_row_major():
    centres = token_centres([(2, 2), (1, 1)])
    assert centres.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]


def test_target_tokens_take_the_centres_inside_the_box_and_always_the_centre_cell():
    # x, y in [0.05, 0.55]: on the 4x4 map the centres 0.125 and 0.375 lie inside, on the 2x2 map only (0.25, 0.25).
    big = torch.tensor([[0.3, 0.3, 0.5, 0.5]])
    inside = target_tokens([(4, 4), (2, 2)], big)[0]
    assert inside.nonzero().flatten().tolist() == [0, 1, 4, 5, 16]
    # A box smaller than a token holds no token centre: the cell under its centre stands in, on every map.
    tiny = torch.tensor([[0.9, 0.1, 0.01, 0.01]])
    inside = target_tokens([(4, 4), (2, 2)], tiny)[0]
    assert inside.nonzero().flatten().tolist() == [3, 17]


def test_region_loss_is_minus_the_log_softmax_mass_on_the_target_tokens():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    tokens = torch.randn(2, 20, 8, generator=g)
    sentences = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    targets = torch.tensor([[0.3, 0.3, 0.5, 0.5], [0.7, 0.6, 0.2, 0.3]])
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, 12:16] = True  # the bottom row of sample 1's 4x4 map is letterbox padding
    loss = region_loss(tokens, sentences, pad, shapes, targets, temperature=0.1)

    expected = []
    for i in range(2):
        scores = [float(F.normalize(tokens[i, n], dim=0) @ sentences[i]) / 0.1 for n in range(20)]
        positive = target_tokens(shapes, targets[i:i + 1])[0].tolist()
        candidates = [n for n in range(20) if not pad[i, n] or positive[n]]
        norm = math.log(sum(math.exp(scores[n]) for n in candidates))
        expected.append(norm - math.log(sum(math.exp(scores[n]) for n in candidates if positive[n])))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_region_loss_rewards_target_tokens_that_match_the_sentence():
    shapes = [(4, 4), (2, 2)]
    targets = torch.tensor([[0.3, 0.3, 0.5, 0.5]])
    positive = target_tokens(shapes, targets)[0]
    sentence = torch.tensor([[1.0, 0.0]])
    matching = torch.where(positive[:, None], torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))[None]
    opposite = torch.where(positive[:, None], torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))[None]
    pad = torch.zeros(1, 20, dtype=torch.bool)
    good = region_loss(matching, sentence, pad, shapes, targets, 0.1).item()
    bad = region_loss(opposite, sentence, pad, shapes, targets, 0.1).item()
    assert good < 0.01 < 5 < bad


def test_region_loss_stays_finite_when_padding_covers_the_target_tokens():
    # A token on the image's edge can be marked padding while it holds part of the box: it stays a candidate.
    shapes = [(4, 4), (2, 2)]
    targets = torch.tensor([[0.3, 0.3, 0.5, 0.5]])
    pad = target_tokens(shapes, targets)
    loss = region_loss(torch.randn(1, 20, 8), F.normalize(torch.randn(1, 8), dim=-1), pad, shapes, targets, 0.1)
    assert torch.isfinite(loss)


def _models(**loss_changes) -> tuple[LGRNet, LGRNet, object]:
    plain, cfg = build("lgrnet-tiny", seed=3)
    torch.manual_seed(3)
    with_region = LGRNet(cfg.model, dataclasses.replace(cfg.loss, **loss_changes))
    return plain, with_region, cfg


def test_region_loss_adds_no_parameters_and_leaves_the_outputs_unchanged():
    plain, region, cfg = _models(region_weight=0.5)
    assert plain.state_dict().keys() == region.state_dict().keys()
    region.load_state_dict(plain.state_dict())
    inputs = make_inputs(cfg.model)
    plain.eval(), region.eval()
    with torch.no_grad():
        a, b = plain(**inputs), region(**inputs)
    assert torch.equal(a.pred_boxes, b.pred_boxes)
    assert "region" not in a.loss_dict and "region" in b.loss_dict
    assert torch.allclose(b.loss, a.loss + 0.5 * b.loss_dict["region"])
    # Without targets (inference) nothing is computed.
    inputs.pop("target_boxes")
    with torch.no_grad():
        assert region(**inputs).loss is None


def test_region_loss_trains_the_visual_extractor_and_the_sentence_projection():
    _, region, cfg = _models(region_weight=1.0, l1_weight=0.0, giou_weight=0.0, align=False)
    assert region.tfe.sentence_proj is not None  # built for the region loss even without the alignment loss
    region.train()
    out = region(**make_inputs(cfg.model))
    assert set(out.loss_dict) >= {"region", "loss"} and "align" not in out.loss_dict
    out.loss.backward()
    assert region.tfe.sentence_proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in region.visual_proj.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in region.visual.parameters())
    assert all(p.grad is None or not p.grad.any() for p in region.head.parameters())  # nothing for the box head


def test_region_loss_is_refused_with_the_generalized_head_and_a_bad_temperature():
    plain, cfg = build("lgrnet-tiny")
    grec_model = dataclasses.replace(cfg.model, grec=dataclasses.replace(cfg.model.grec, enabled=True))
    with pytest.raises(LGRNetError, match="region_weight"):
        LGRNet(grec_model, LossConfig(region_weight=1.0))
    with pytest.raises(LGRNetError, match="region_temperature"):
        LGRNet(cfg.model, LossConfig(region_weight=1.0, region_temperature=0.0))
