"""LGRNet assembled: shapes, padding invariance, gradients, autocast, state-dict round trip, variants."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build, make_inputs

from lgrnet.config import PRESETS, load_config
from lgrnet.model.lgrnet import LGRNet, LGRNetOutput


@pytest.mark.parametrize("preset", list(PRESETS))
def test_tiny_twin_output_shapes(preset):
    model, cfg = build(preset)
    n, b = cfg.model.num_layers, 3
    out = model(**make_inputs(cfg.model, batch=b), output_attentions=True)
    s, stride = cfg.model.image_size, model.visual.out_stride  # 32 for 4-stage backbones, 16 for the 3-stage ones
    assert stride == (16 if preset in ("lgrnet-tiny", "lgrnet-small") else 32)
    nv = (s // stride) ** 2 + (s // (2 * stride)) ** 2
    assert isinstance(out, LGRNetOutput)
    assert out.pred_boxes.shape == (b, 4)
    assert out.layer_boxes.shape == (n, b, 4)
    assert torch.equal(out.layer_boxes[-1], out.pred_boxes)
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    assert out.coord.shape == (b, 2)
    assert out.visual_attention.shape == (n, b, nv)
    assert out.text_attention.shape == (n, b, 12)
    # Head-averaged softmax rows sum to one over the keys (visual part only misses the prediction column).
    assert torch.allclose(out.text_attention.sum(-1), torch.ones(n, b), atol=1e-5)
    assert (out.visual_attention.sum(-1) <= 1 + 1e-5).all()
    assert out.token_shapes == [(s // stride, s // stride), (s // (2 * stride), s // (2 * stride))]
    assert out.loss is not None and torch.isfinite(out.loss)
    assert {"l1", "giou", "loss"} <= set(out.loss_dict)
    if cfg.loss.aux_loss:
        assert f"l1_{n - 2}" in out.loss_dict and f"giou_{n - 2}" in out.loss_dict
    assert ("align" in out.loss_dict) == cfg.loss.align


def test_padded_visual_tokens_get_no_attention():
    model, cfg = build()
    model.eval()
    inputs = make_inputs(cfg.model)
    inputs["image_mask"][0] = False
    inputs["image_mask"][0, :, 64:] = True  # right half of a 128 canvas: columns 2, 3 of the 4x4 H/32 map
    out = model(**inputs, output_attentions=True)
    vis_mask = model.visual(inputs["images"], inputs["image_mask"], model.text(
        inputs["input_ids"], inputs["attention_mask"]).cls)[1]
    assert vis_mask[0].any()
    assert (out.visual_attention[:, 0][:, vis_mask[0]] == 0).all()
    assert (out.text_attention[:, 1, 5:] == 0).all()  # sample 1 has 5 real tokens


def test_no_outputs_without_targets_or_attention_request():
    model, cfg = build()
    inputs = make_inputs(cfg.model)
    inputs.pop("target_boxes")
    out = model(**inputs)
    assert out.loss is None and out.loss_dict == {}
    assert out.visual_attention is None and out.text_attention is None


def test_text_padding_amount_does_not_change_outputs():
    model, cfg = build()
    model.eval()
    inputs = make_inputs(cfg.model, length=12)
    inputs.pop("target_boxes")
    longer = dict(inputs)
    pad = 8
    longer["input_ids"] = torch.cat((inputs["input_ids"], torch.zeros(3, pad, dtype=torch.long)), dim=1)
    longer["attention_mask"] = torch.cat((inputs["attention_mask"], torch.zeros(3, pad, dtype=torch.long)), dim=1)
    with torch.no_grad():
        a, b = model(**inputs), model(**longer)
    assert torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-5)
    assert torch.allclose(a.layer_boxes, b.layer_boxes, atol=1e-5)
    assert torch.allclose(a.coord, b.coord, atol=1e-5)


@pytest.mark.parametrize("preset", ["lgrnet-swin-s", "lgrnet-paper-swin-s"])
def test_every_trainable_parameter_gets_a_gradient(preset):
    model, cfg = build(preset)
    model.train()
    out = model(**make_inputs(cfg.model))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert missing == []
    assert model.criterion.logit_scale.grad.abs() > 0


@pytest.mark.parametrize("changes", [
    {"coord_embed": "add"}, {"coord_embed": "concat"}, {"coord_embed": "none"},
    {"text_attends_image": True}, {"num_pred_tokens": 2, "pred_token": "learnable"},
    {"cross_attn_projections": True}, {"proj_layers": 2}, {"num_layers": 3},
])
def test_variants_run_and_train(changes):
    model, cfg = build(**changes)
    out = model(**make_inputs(cfg.model), output_attentions=True)
    out.loss.backward()
    assert out.layer_boxes.shape == (cfg.model.num_layers, 3, 4)
    assert out.text_attention.shape == (cfg.model.num_layers, 3, 12)
    assert (out.coord is None) == (changes.get("coord_embed") == "none")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_reference_switches_have_reference_modules():
    ref, _ = build("lgrnet-swin-s")
    names = dict(ref.named_parameters())
    assert ref.pred_token is None  # zero token, not a parameter
    assert "reasoning.layers.0.cross_attn.in_proj_weight" not in names
    assert "reasoning.layers.0.self_attn.in_proj_weight" in names
    paper, _ = build("lgrnet-paper-swin-s")
    assert "reasoning.layers.0.cross_attn.in_proj_weight" in dict(paper.named_parameters())
    assert paper.pred_token is not None


def test_zero_prediction_token_is_not_a_parameter_and_learnable_one_is():
    model, _ = build(pred_token="zero")
    assert not any("pred_token" in n for n, _ in model.named_parameters())
    model, _ = build(pred_token="learnable", num_pred_tokens=3)
    assert model.pred_token.weight.shape == (3, 32)
    assert model.visual_pos.weight.shape[0] == 3 + 16 + 4


def test_runs_under_cpu_bf16_autocast():
    model, cfg = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**make_inputs(cfg.model), output_attentions=True)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(out.pred_boxes.float()).all()


def test_state_dict_round_trip_reproduces_outputs(tmp_path):
    model, cfg = build(seed=1)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    other, _ = build(seed=2)
    other.eval()
    inputs = make_inputs(cfg.model)
    with torch.no_grad():
        before = model(**inputs)
        assert not torch.equal(other(**inputs).pred_boxes, before.pred_boxes)
        other.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
        after = other(**inputs)
    assert torch.equal(before.layer_boxes, after.layer_boxes)
    assert torch.equal(before.loss, after.loss)


def test_param_groups():
    model, _ = build()
    groups = {}
    for name in dict(model.named_parameters()):
        groups.setdefault(LGRNet.param_group(name), []).append(name)
    assert set(groups) == {"text", "visual", "neck_lateral", "qda", "rest"}
    assert all(n.startswith("text.") for n in groups["text"])
    assert all("qda" in n for n in groups["qda"])
    assert "criterion.logit_scale" in groups["rest"]
    assert LGRNet.param_group("module.text.encoder.embeddings.word_embeddings.weight") == "text"


def test_image_size_mismatch_is_a_clear_error():
    model, cfg = build()
    inputs = make_inputs(cfg.model)
    inputs["images"] = torch.randn(3, 3, 192, 192)
    inputs["image_mask"] = torch.zeros(3, 192, 192, dtype=torch.bool)
    with pytest.raises(Exception, match="image_size"):
        model(**inputs)


@pytest.mark.slow
def test_full_reference_forward_at_640_on_cpu():
    cfg = load_config("lgrnet-swin-s", ["model.text.pretrained=false"])
    model = LGRNet(cfg.model, cfg.loss).eval()
    inputs = make_inputs(cfg.model, batch=1, length=40)
    with torch.no_grad():
        out = model(**inputs)
    assert out.pred_boxes.shape == (1, 4) and out.layer_boxes.shape == (6, 1, 4)
    assert out.token_shapes == [(20, 20), (10, 10)]
    assert torch.isfinite(out.loss)
