"""Query-dynamic attention (spec 3.2): parameter layout and counts, the 0.25 identity at init, the gate formulas,
the channels-first map path and the folded inference projection against the plain formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lgrnet.model.qda import REFERENCE_QDA_KEY_MAP, DynamicLinear, QueryDynamicAttention


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


# --------------------------------------------------------------------------------------------------------------
# Channels-first map path (gates from their factors, optional 2x2 pool) and the folded inference projection.

GATES = {"both": (True, True), "channel only": (True, False), "spatial only": (False, True), "none": (False, False)}


def _trained_qda(channel_gate: bool = True, spatial_gate: bool = True, seed: int = 7) -> QueryDynamicAttention:
    """C = 16, rank 6, hidden 4: the spatial gate and the channel MLP's first layer fold (m < k), the second not."""
    torch.manual_seed(seed)
    qda = QueryDynamicAttention(16, text_dim=8, rank=6, reduction=4, channel_gate=channel_gate,
                                spatial_gate=spatial_gate)
    with torch.no_grad():
        for name, p in qda.named_parameters():
            p.normal_(0, 0.4 if name.endswith(".V") else 0.2)
    return qda


def _map_by_tokens(qda: QueryDynamicAttention, x: torch.Tensor, text: torch.Tensor, pool: bool) -> torch.Tensor:
    """The formulation before the map path: gate the transposed token view, back to NCHW, then pool."""
    b, c, h, w = x.shape
    gated = qda(x.flatten(2).transpose(1, 2), text).transpose(1, 2).reshape(b, c, h, w)
    return F.avg_pool2d(gated, kernel_size=2, stride=2, ceil_mode=True) if pool else gated


@pytest.mark.parametrize("gates", list(GATES))
@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
@pytest.mark.parametrize("pool", [False, True])
def test_map_path_matches_token_formula(gates: str, size: tuple[int, int], pool: bool) -> None:
    qda = _trained_qda(*GATES[gates])
    x, text = torch.randn(2, 16, *size), torch.randn(2, 8)
    out = qda(x, text, pool=pool)
    expected_size = tuple(-(-s // 2) for s in size) if pool else size
    assert out.shape == (2, 16, *expected_size)
    torch.testing.assert_close(out, _map_by_tokens(qda, x, text, pool), rtol=1e-5, atol=1e-6)
    if not pool:
        torch.testing.assert_close(qda.forward_map(x, text), out, rtol=0, atol=0)
    # Channels-last input (a permuted NHWC buffer, as the Swin stage outputs are): same values.
    out_cl = qda(x.to(memory_format=torch.channels_last), text, pool=pool)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gates", list(GATES))
@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
def test_map_path_gradients_match_token_formula(gates: str, size: tuple[int, int]) -> None:
    qda = _trained_qda(*GATES[gates])
    params = dict(qda.named_parameters())
    torch.manual_seed(3)
    x, text = torch.randn(2, 16, *size), torch.randn(2, 8)
    probe = torch.randn(2, 16, -(-size[0] // 2), -(-size[1] // 2))

    def grads(fn) -> dict[str, torch.Tensor]:
        xi, ti = x.clone().requires_grad_(True), text.clone().requires_grad_(True)
        (fn(xi, ti) * probe).sum().backward()
        out = {"x": xi.grad, "text": ti.grad, **{n: p.grad.clone() for n, p in params.items()}}
        qda.zero_grad(set_to_none=True)
        return out

    new = grads(lambda xi, ti: qda(xi, ti, pool=True))
    old = grads(lambda xi, ti: _map_by_tokens(qda, xi, ti, pool=True))
    assert new.keys() == old.keys()
    for name in new:
        torch.testing.assert_close(new[name], old[name], rtol=1e-5, atol=1e-6, msg=name)


def test_pool_on_tokens_raises() -> None:
    qda = _trained_qda()
    with pytest.raises(ValueError, match="pool=True"):
        qda(torch.randn(2, 9, 16), torch.randn(2, 8), pool=True)


def _dynamic_linears(qda: torch.nn.Module) -> dict[str, DynamicLinear]:
    return {name: m for name, m in qda.named_modules() if isinstance(m, DynamicLinear)}


def _unfolded(qda: QueryDynamicAttention, *args, **kwargs) -> torch.Tensor:
    """The factorised form on the same module (fold switched off on every layer for this call)."""
    layers = _dynamic_linears(qda).values()
    for layer in layers:
        layer.fold_at_inference = False
    try:
        return qda(*args, **kwargs)
    finally:
        for layer in layers:
            del layer.fold_at_inference


def test_folded_projection_equals_factorised_form() -> None:
    qda = _trained_qda().eval()
    tokens, grid, text = torch.randn(2, 11, 16), torch.randn(2, 16, 6, 8), torch.randn(2, 8)
    with torch.inference_mode():
        folded = qda(tokens, text), qda(grid, text, pool=True), qda(grid, text)
        assert {name for name, m in _dynamic_linears(qda).items() if m._folded is not None} == {
            "spatial_gate.linear", "channel_gate.mlp.0"}  # m = 1 and 4 < k = 6; mlp.2 has m = 16 > 6
        assert qda.spatial_gate.linear._folded[0].shape == (17, 8)  # (C + 1) x T instead of (C + 1) k x T
        unfolded = _unfolded(qda, tokens, text), _unfolded(qda, grid, text, pool=True), _unfolded(qda, grid, text)
    for a, b in zip(folded, unfolded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Per layer: the generated weight and bias themselves.
    for layer in _dynamic_linears(qda).values():
        with torch.no_grad():
            w_fold, b_fold = layer.generate(text)
            layer.fold_at_inference = False
            w_ref, b_ref = layer.generate(text)
        torch.testing.assert_close(w_fold, w_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b_fold, b_ref, rtol=1e-5, atol=1e-6)


def test_folded_cache_refreshed_after_load_state_dict() -> None:
    qda, other = _trained_qda(seed=1).eval(), _trained_qda(seed=2).eval()
    x, text = torch.randn(2, 16, 6, 8), torch.randn(2, 8)
    with torch.no_grad():
        before = qda(x, text, pool=True)  # builds the cache from seed 1's weights
        qda.load_state_dict(other.state_dict())
        after = qda(x, text, pool=True)
        expected = _unfolded(other, x, text, pool=True)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_folded_cache_refreshed_after_optimizer_step() -> None:
    qda = _trained_qda().eval()  # stays in eval mode: only the parameters' version counters can tell
    x, text = torch.randn(2, 16, 6, 8), torch.randn(2, 8)
    with torch.no_grad():
        before = qda(x, text, pool=True)
    optimizer = torch.optim.SGD(qda.parameters(), lr=0.5)
    qda(x, text, pool=True).square().sum().backward()  # grad enabled: factorised form, real gradients
    optimizer.step()
    with torch.no_grad():
        after = qda(x, text, pool=True)
        expected = _unfolded(qda, x, text, pool=True)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_folded_cache_follows_dtype_and_replaced_parameters() -> None:
    qda = _trained_qda().eval()
    x, text = torch.randn(2, 16, 6, 8), torch.randn(2, 8)
    with torch.no_grad():
        qda(x, text)
        qda.double()
        out = qda(x.double(), text.double())
        assert out.dtype == torch.float64 and qda.spatial_gate.linear._folded[0].dtype == torch.float64
        torch.testing.assert_close(out, _unfolded(qda, x.double(), text.double()))
        # New parameter objects start at version 0: identity, not the version alone, tells them apart.
        layer = qda.spatial_gate.linear
        layer.V = torch.nn.Parameter(-layer.V.detach())
        qda(x.double(), text.double())
        layer.V = torch.nn.Parameter(2 * layer.V.detach())
        torch.testing.assert_close(qda(x.double(), text.double()), _unfolded(qda, x.double(), text.double()))


def test_train_mode_grad_mode_and_compile_never_use_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    qda = _trained_qda()
    x, text = torch.randn(2, 16, 6, 8), torch.randn(2, 8)
    qda.eval()
    with torch.no_grad():
        qda(x, text)
    assert qda.spatial_gate.linear._folded is not None
    qda.train()  # drops the cache
    assert all(m._folded is None for m in _dynamic_linears(qda).values())

    def no_fold(self):
        raise AssertionError("folded the projection outside eval inference")

    monkeypatch.setattr(DynamicLinear, "_fold", no_fold)
    with torch.no_grad():
        qda(x, text, pool=True)  # train mode, gradients off
    qda.eval()
    qda(x, text, pool=True).sum().backward()  # eval mode, gradients on: V must get its gradient
    assert qda.spatial_gate.linear.V.grad.abs().sum() > 0
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        qda(x, text)  # while torch.compile traces: factorised form (no Python-side cache in the graph)
