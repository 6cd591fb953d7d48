"""Query-dynamic attention (spec 3.2): parameter layout and counts, the 0.25 identity at init, the gate formulas."""

from __future__ import annotations

import pytest
import torch

from lgrnet.model.qda import REFERENCE_QDA_KEY_MAP, QueryDynamicAttention


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("channels", "expected"), [
    (96, 4_640_160), (192, 9_211_080), (384, 18_352_920), (768, 36_636_600), (256, 12_258_360),
])
def test_parameter_counts_match_reference(channels: int, expected: int) -> None:
    # Spec 13: backbone stages 96..768 and the neck's fpn_down on 256 channels (text 768, rank 30, reduction 16).
    qda = QueryDynamicAttention(channels, text_dim=768, rank=30, reduction=16)
    assert _count(qda) == expected


def test_parameter_names_mirror_reference_layout() -> None:
    qda = QueryDynamicAttention(96, text_dim=768, rank=30, reduction=16)
    shapes = {name: tuple(p.shape) for name, p in qda.named_parameters()}
    assert set(shapes) == set(REFERENCE_QDA_KEY_MAP)
    # Shapes of the reference's qdatt tensors (spec 13) for C = 96, C/16 = 6.
    assert shapes["channel_gate.mlp.0.proj.weight"] == (97 * 30, 768)
    assert shapes["channel_gate.mlp.0.V"] == (30, 6)
    assert shapes["channel_gate.mlp.2.proj.weight"] == (7 * 30, 768)
    assert shapes["channel_gate.mlp.2.V"] == (30, 96)
    assert shapes["spatial_gate.linear.proj.weight"] == (97 * 30, 768)
    assert shapes["spatial_gate.linear.V"] == (30, 1)


@pytest.mark.parametrize("init", ["default", "trunc_normal"])
def test_fresh_qda_outputs_quarter_of_input(init: str) -> None:
    torch.manual_seed(0)
    qda = QueryDynamicAttention(24, text_dim=16, rank=5, reduction=4, init=init)
    x = torch.randn(3, 11, 24)
    out = qda(x, torch.randn(3, 16))
    assert torch.equal(out, 0.25 * x)


def test_trunc_normal_init_zero_bias_and_small_weights() -> None:
    qda = QueryDynamicAttention(64, text_dim=32, rank=4, reduction=4, init="trunc_normal")
    weight = qda.channel_gate.mlp[0].proj.weight
    assert torch.all(qda.channel_gate.mlp[0].proj.bias == 0)
    # Swin's trunc_normal_(std=0.02) truncates at +-2 absolute, so it is a plain N(0, 0.02) in practice.
    assert 0.018 < weight.std() < 0.022 and weight.abs().max() < 0.2


def _direct_qda(qda: QueryDynamicAttention, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Spec 3.2 written out per sample with explicit weight matrices."""

    def dyn(layer, t):  # -> W [n, m], b [m]
        u = (layer.proj.weight @ t + layer.proj.bias).reshape(layer.in_features + 1, layer.rank)
        p = u @ layer.V
        return p[:-1], p[-1]

    out = []
    for xb, tb in zip(x, text):
        w0, b0 = dyn(qda.channel_gate.mlp[0], tb)
        w2, b2 = dyn(qda.channel_gate.mlp[2], tb)

        def mlp(z, w0=w0, b0=b0, w2=w2, b2=b2):
            return torch.relu(z @ w0 + b0) @ w2 + b2

        s = torch.sigmoid(mlp(xb.mean(0)) + mlp(xb.max(0).values))
        xb = xb * s
        ws, bs = dyn(qda.spatial_gate.linear, tb)
        xb = xb * torch.sigmoid(xb @ ws + bs)
        out.append(xb)
    return torch.stack(out)


def test_gates_match_direct_formula_with_trained_v() -> None:
    torch.manual_seed(1)
    qda = QueryDynamicAttention(32, text_dim=12, rank=6, reduction=4)
    with torch.no_grad():
        for name, p in qda.named_parameters():
            if name.endswith(".V"):
                p.normal_(0, 0.3)
    x, text = torch.randn(2, 15, 32), torch.randn(2, 12)
    out = qda(x, text)
    assert not torch.allclose(out, 0.25 * x)
    torch.testing.assert_close(out, _direct_qda(qda, x, text), rtol=1e-5, atol=1e-6)
    # The map form is the token form on a channels-first layout.
    grid = x.transpose(1, 2).reshape(2, 32, 3, 5)
    torch.testing.assert_close(qda.forward_map(grid, text).flatten(2).transpose(1, 2), out)


def test_disable_flags() -> None:
    x, text = torch.randn(2, 7, 16), torch.randn(2, 8)
    both_off = QueryDynamicAttention(16, 8, rank=3, reduction=4, channel_gate=False, spatial_gate=False)
    assert _count(both_off) == 0 and torch.equal(both_off(x, text), x)
    channel_only = QueryDynamicAttention(16, 8, rank=3, reduction=4, spatial_gate=False)
    assert channel_only.spatial_gate is None and torch.equal(channel_only(x, text), 0.5 * x)
    spatial_only = QueryDynamicAttention(16, 8, rank=3, reduction=4, channel_gate=False)
    assert spatial_only.channel_gate is None and torch.equal(spatial_only(x, text), 0.5 * x)


def test_gradients_reach_every_parameter_and_the_text() -> None:
    torch.manual_seed(2)
    qda = QueryDynamicAttention(16, 8, rank=3, reduction=4)
    with torch.no_grad():
        for name, p in qda.named_parameters():
            if name.endswith(".V"):
                p.normal_()
    text = torch.randn(2, 8, requires_grad=True)
    qda(torch.randn(2, 9, 16), text).square().sum().backward()
    for name, p in qda.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_bad_input_shape_and_init_raise() -> None:
    qda = QueryDynamicAttention(16, 8, rank=3, reduction=4)
    with pytest.raises(ValueError, match=r"\[B, N, 16\]"):
        qda(torch.randn(2, 9, 15), torch.randn(2, 8))
    with pytest.raises(ValueError, match="unknown init"):
        QueryDynamicAttention(16, 8, init="xavier")  # type: ignore[arg-type]
