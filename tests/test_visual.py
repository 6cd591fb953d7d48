"""Visual extractor (spec 3): shapes, masks, QDA placement, neck arithmetic, Swin window order, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import tiny_twin

from lgrnet.config import ConfigError, load_config
from lgrnet.model.swin import ReferenceOrderBlock
from lgrnet.model.visual import VisualExtractor

TEXT_DIM = 32


def _tiny(preset: str = "lgrnet-swin-s", **changes) -> VisualExtractor:
    cfg = tiny_twin(preset).model.visual
    for key, value in changes.pop("cfg", {}).items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return VisualExtractor(cfg, TEXT_DIM, changes.pop("image_size", 128)).eval()


def _inputs(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(batch, 3, size, size), torch.zeros(batch, size, size, dtype=torch.bool), torch.randn(
        batch, TEXT_DIM)


def _randomise_v(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".V"):
                p.normal_(0, 0.5)


@pytest.mark.parametrize("preset", ["lgrnet-swin-s", "lgrnet-paper-swin-s", "lgrnet-r101"])
@pytest.mark.parametrize("size", [128, 192])
def test_output_shapes(preset: str, size: int) -> None:
    model = _tiny(preset, image_size=size)
    images, mask, text = _inputs(2, size)
    tokens, token_mask = model(images, mask, text)
    n = (size // 32) ** 2 + (size // 64) ** 2
    assert tokens.shape == (2, n, model.out_channels) and model.out_channels == 32
    assert token_mask.shape == (2, n) and token_mask.dtype == torch.bool and not token_mask.any()
    assert model.token_shapes == [(size // 32, size // 32), (size // 64, size // 64)]
    assert torch.isfinite(tokens).all()


def test_letterbox_mask_samples_top_left_pixel_of_each_token() -> None:
    model = _tiny(image_size=192)
    images, mask, text = _inputs(2, 192)
    mask[0, :, 100:] = True  # sample 0: right padding from x = 100 (tokens with 32 j >= 100, 64 j >= 100)
    mask[1, 150:, :] = True  # sample 1: bottom padding from y = 150
    _, token_mask = model(images, mask, text)
    expected = []
    for m in mask:
        rows = [[bool(m[32 * i, 32 * j]) for j in range(6)] for i in range(6)]
        rows64 = [[bool(m[64 * i, 64 * j]) for j in range(3)] for i in range(3)]
        expected.append(sum(rows, []) + sum(rows64, []))
    assert token_mask.tolist() == expected
    # Row-major, H/32 first: sample 0 masks columns 4, 5 of the 6x6 map and column 2 of the 3x3 map.
    assert token_mask[0, :6].tolist() == [False] * 4 + [True] * 2
    assert token_mask[0, 36:39].tolist() == [False, False, True]
    assert token_mask[1, 30:36].all() and not token_mask[1, :30].any()


def test_query_modulation_off_has_no_qda_and_ignores_text() -> None:
    model = _tiny("lgrnet-paper-swin-s")
    assert model.stage_qda is None and model.neck.down_qda is None
    assert not any("qda" in name for name, _ in model.named_parameters())
    images, mask, text = _inputs(2, 128)
    a, _ = model(images, mask, None)
    b, _ = model(images, mask, text)
    assert torch.equal(a, b)


def test_query_modulation_on_requires_matching_text() -> None:
    model = _tiny()
    images, mask, text = _inputs(2, 128)
    with pytest.raises(ValueError, match="text_cond"):
        model(images, mask, None)
    with pytest.raises(ValueError, match="text_cond"):
        model(images, mask, text[:, :5])
    with pytest.raises(ValueError, match="multiple of 64"):
        model(images[..., :96, :96], mask[..., :96, :96], text)
    with pytest.raises(ConfigError, match="image_size"):
        VisualExtractor(tiny_twin("lgrnet-swin-s").model.visual, TEXT_DIM, 100)


def test_text_changes_output_once_v_is_trained() -> None:
    model = _tiny()
    images, mask, text = _inputs(2, 128)
    fresh = model(images, mask, text)[0]
    assert torch.equal(fresh, model(images, mask, -text)[0])  # V = 0: the gates ignore the text
    _randomise_v(model)
    assert not torch.allclose(model(images, mask, text)[0], model(images, mask, -text)[0])


def test_parameter_naming_for_lr_groups() -> None:
    for preset in ("lgrnet-swin-s", "lgrnet-r101"):
        model = _tiny(preset)
        names = [name for name, _ in model.named_parameters()]
        qda = [n for n in names if n.startswith(("stage_qda.", "neck.down_qda."))]
        assert qda and all("qda" in n for n in qda)
        assert all(n.startswith("backbone.") or "qda" in n or n.startswith("neck.laterals.") for n in names)
        assert not any(n.startswith("backbone.") and "qda" in n for n in names)
        assert [n for n in names if n.startswith("neck.laterals.")] == [
            f"neck.laterals.{i}.{k}" for i in range(4) for k in ("weight", "bias")]
    swin = _tiny()
    assert {f"backbone.norm{i}.weight" for i in range(4)} <= {n for n, _ in swin.named_parameters()}


@pytest.mark.parametrize("preset", ["lgrnet-swin-s", "lgrnet-r101"])
def test_gradients_reach_every_parameter(preset: str) -> None:
    model = _tiny(preset).train()
    _randomise_v(model)
    with torch.no_grad():  # timm zero-initialises each residual block's last BN scale, which blocks gradients
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    images, mask, text = _inputs(2, 128)
    text.requires_grad_(True)
    tokens, _ = model(images, mask, text)
    tokens.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0


def test_gated_map_feeds_stage_output_and_next_stage() -> None:
    model = _tiny()
    images, mask, text = _inputs(1, 128)
    seen = {}
    model.stage_qda[0].register_forward_hook(lambda m, a, out: seen.__setitem__("qda", out))
    model.backbone.norm0.register_forward_hook(lambda m, a, out: seen.__setitem__("norm_in", a[0]))
    model.backbone.layers[1].register_forward_hook(lambda m, a, out: seen.__setitem__("next_in", a[0]))
    model(images, mask, text)
    gated = seen["qda"].reshape(seen["norm_in"].shape)
    assert torch.equal(seen["norm_in"], gated) and torch.equal(seen["next_in"], gated)


def test_neck_arithmetic_matches_spec() -> None:
    """Laterals, top-down nearest sum, bottom-up avg-pool sum (QDA = 0.25 x at init), stride-2 subsample."""
    model = _tiny()
    neck = model.neck
    torch.manual_seed(3)
    sizes = [16, 8, 4, 2]
    feats = [torch.randn(1, c, s, s) for c, s in zip(model.stage_channels, sizes)]
    top, extra = neck(feats, torch.randn(1, TEXT_DIM))
    lat = [F.conv2d(f, conv.weight, conv.bias) for f, conv in zip(feats, neck.laterals)]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + lat[i].repeat_interleave(2, -1).repeat_interleave(2, -2)
    for i in (0, 1, 2):
        x = 0.25 * lat[i]
        lat[i + 1] = lat[i + 1] + (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 4
    torch.testing.assert_close(top, lat[3])
    torch.testing.assert_close(extra, lat[3][..., ::2, ::2])


def test_resnet_qda_after_each_stage() -> None:
    model = _tiny("lgrnet-r101")
    assert model.stage_channels == [64, 128, 256, 512]
    assert [q.channels for q in model.stage_qda] == [64, 128, 256, 512]
    images, mask, text = _inputs(1, 128)
    plain_cfg = tiny_twin("lgrnet-r101").model.visual
    plain_cfg.query_modulation = False
    plain = VisualExtractor(plain_cfg, TEXT_DIM, 128).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    # With V = 0 every stage output is scaled by 0.25 before the next stage: the outputs must differ.
    assert not torch.allclose(plain(images, mask, None)[0], model(images, mask, text)[0])


@pytest.fixture(scope="module")
def full_swin_s() -> VisualExtractor:
    """The reference preset's visual extractor with random weights (about 155M parameters, a few seconds)."""
    return VisualExtractor(load_config("lgrnet-swin-s").model.visual, 768, 640)


def test_drop_path_linear_over_blocks(full_swin_s: VisualExtractor) -> None:
    model = full_swin_s
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for stage in model.backbone.layers for b in stage.blocks]
    assert len(rates) == 24
    assert rates == pytest.approx(torch.linspace(0, 0.2, 24).tolist())


def test_full_swin_s_parameter_counts(full_swin_s: VisualExtractor) -> None:
    """Spec 13: Swin-S proper 48,838,602, backbone QDA 68,840,760, laterals 369,664, neck QDA 36,775,080."""
    model = full_swin_s
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        group = ("backbone_qda" if name.startswith("stage_qda.") else "neck_qda" if name.startswith("neck.down_qda.")
                 else "laterals" if name.startswith("neck.laterals.") else "backbone" if name.startswith("backbone.")
                 else name)
        counts[group] = counts.get(group, 0) + p.numel()
    assert counts == {"backbone": 48_838_602, "backbone_qda": 68_840_760, "laterals": 369_664,
                      "neck_qda": 36_775_080}
    assert [sum(p.numel() for p in q.parameters()) for q in model.stage_qda] == [
        4_640_160, 9_211_080, 18_352_920, 36_636_600]
    assert [sum(p.numel() for p in q.parameters()) for q in model.neck.down_qda] == [12_258_360] * 3
    # Every block keeps the full 7x7 window: (2*7-1)^2 relative-position rows, as in the checkpoints.
    tables = [b.attn.relative_position_bias_table for s in model.backbone.layers for b in s.blocks]
    assert all(t.shape[0] == 169 for t in tables)


# --------------------------------------------------------------------------------------------------------------
# Swin window order: an independent implementation of the reference (Swin-Object-Detection) block.


def _reference_block(block, x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """Pre-norm Swin block in the reference order, written with explicit loops: pad -> roll -> windows."""
    _, h, w, c = x.shape
    heads = block.attn.num_heads
    hd = c // heads
    y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    padded = torch.zeros(x.shape[0], hp, wp, c)
    padded[:, :h, :w] = y
    if shift:
        padded = torch.roll(padded, (-shift, -shift), (1, 2))

    def region(v: int, size: int) -> int:  # label of a coordinate of the rolled, padded map
        return 0 if v < size - window else (1 if v < size - shift else 2)

    table = block.attn.relative_position_bias_table
    out = torch.zeros_like(padded)
    for wi in range(0, hp, window):
        for wj in range(0, wp, window):
            cells = [(wi + a, wj + b) for a in range(window) for b in range(window)]
            tokens = torch.stack([padded[:, i, j] for i, j in cells], 1)  # [B, w*w, C]
            qkv = F.linear(tokens, block.attn.qkv.weight, block.attn.qkv.bias)
            q, k, v = qkv.reshape(x.shape[0], len(cells), 3, heads, hd).permute(2, 0, 3, 1, 4)
            logits = (q * hd ** -0.5) @ k.transpose(-1, -2)
            bias = torch.zeros(heads, len(cells), len(cells))
            for m, (i1, j1) in enumerate(cells):
                for n, (i2, j2) in enumerate(cells):
                    bias[:, m, n] = table[(i1 - i2 + window - 1) * (2 * window - 1) + (j1 - j2 + window - 1)]
                    if shift and (region(i1, hp), region(j1, wp)) != (region(i2, hp), region(j2, wp)):
                        bias[:, m, n] -= 100.0
            att = (logits + bias).softmax(-1) @ v  # [B, heads, w*w, hd]
            att = F.linear(att.transpose(1, 2).reshape(x.shape[0], len(cells), c), block.attn.proj.weight,
                           block.attn.proj.bias)
            for m, (i, j) in enumerate(cells):
                out[:, i, j] = att[:, m]
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out[:, :h, :w]
    return x + block.mlp(F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps))


@pytest.mark.parametrize(("h", "w"), [(10, 9), (4, 4)])
def test_reference_window_order_matches_direct_computation(h: int, w: int) -> None:
    model = _tiny()
    stage = model.backbone.layers[2]  # two blocks: index 0 plain windows, index 1 shifted
    torch.manual_seed(4)
    with torch.no_grad():
        for p in stage.parameters():
            p.normal_(0, 0.3)  # random bias tables etc. so any misplaced term shows
        x = torch.randn(2, h, w, stage.blocks[0].dim)
        for index, block in enumerate(stage.blocks):
            assert isinstance(block, ReferenceOrderBlock)
            shift = 3 if index == 1 else 0
            assert (block.ref_window, block.ref_shift) == (7, shift)
            torch.testing.assert_close(block(x), _reference_block(block, x, 7, shift), rtol=1e-4, atol=1e-4)


def test_timm_order_differs_where_the_override_matters() -> None:
    """Without the override (timm: roll, then pad) a 10x9 map gives different results: the test above bites."""
    model = _tiny()
    block = model.backbone.layers[2].blocks[1]
    torch.manual_seed(5)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(1, 10, 9, block.dim)
        reference = block(x)
        block.__class__ = ReferenceOrderBlock.__mro__[1]  # timm's SwinTransformerBlock
        assert not torch.allclose(block(x), reference, atol=1e-3)
        # On a multiple of the window the two orders agree.
        x14 = torch.randn(1, 14, 14, block.dim)
        timm_out = block(x14)
        block.__class__ = ReferenceOrderBlock
        torch.testing.assert_close(block(x14), timm_out, rtol=1e-5, atol=1e-5)


def test_pad_before_shift_switch() -> None:
    model = _tiny(cfg={"swin_pad_before_shift": False})
    assert not any(isinstance(b, ReferenceOrderBlock) for s in model.backbone.layers for b in s.blocks)
    images, mask, text = _inputs(1, 128)
    assert model(images, mask, text)[0].shape == (1, 20, 32)


@pytest.mark.parametrize(("fine", "coarse", "fast"), [
    ((16, 16), (8, 8), True), ((12, 20), (6, 10), True), ((2, 2), (1, 1), True),
    ((15, 15), (8, 8), False), ((16, 15), (8, 8), False), ((16, 16), (4, 4), False),
])
def test_top_down_broadcast_add_is_bit_identical_to_interpolate(fine, coarse, fast) -> None:
    from lgrnet.model.visual import add_upsampled_

    torch.manual_seed(5)
    for channels_last in (False, True):
        f, c = torch.randn(2, 6, *fine), torch.randn(2, 6, *coarse)
        if channels_last:
            f, c = f.to(memory_format=torch.channels_last), c.to(memory_format=torch.channels_last)
        expected = f + F.interpolate(c, size=fine, mode="nearest")
        out = add_upsampled_(f, c)
        assert torch.equal(out, expected)
        assert (out is f) == fast  # exact 2x: in place on the view; any other ratio: interpolate fallback


def test_neck_with_odd_maps_takes_the_interpolate_fallback() -> None:
    """Odd levels (15 -> 8 -> 4 -> 2) give the same neck output as the interpolate formulation."""
    model = _tiny()
    neck = model.neck
    torch.manual_seed(4)
    feats = [torch.randn(1, c, s, s) for c, s in zip(model.stage_channels, [15, 8, 4, 2])]
    text = torch.randn(1, TEXT_DIM)
    top, extra = neck(feats, text)
    lat = [F.conv2d(f, conv.weight, conv.bias) for f, conv in zip(feats, neck.laterals)]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    for i in (0, 1, 2):
        x = neck.down_qda[i].forward_map(lat[i], text)
        lat[i + 1] = lat[i + 1] + F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
    assert torch.equal(top, lat[3]) and torch.equal(extra, lat[3][..., ::2, ::2])


def test_three_stage_resnet_halves_the_output_stride() -> None:
    """out_indices (1, 2, 3): the last stage is not built, the neck returns strides 16 and 32, sizes must be
    multiples of 32 (and 64 is no longer required)."""
    model = _tiny("lgrnet-r101", cfg={"out_indices": [1, 2, 3]}, image_size=96)
    assert model.out_stride == 16 and model.stage_channels == [64, 128, 256]
    assert not any(name.startswith("backbone.layer4") for name, _ in model.named_parameters())
    images, mask, text = _inputs(2, 96)
    tokens, token_mask = model(images, mask, text)
    assert model.token_shapes == [(6, 6), (3, 3)] and tokens.shape == (2, 45, model.out_channels)
    with pytest.raises(ConfigError, match="multiple of 32"):
        _tiny("lgrnet-r101", cfg={"out_indices": [1, 2, 3]}, image_size=80)


def _neck_by_old_formula(neck, feats: list[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """The neck as written before the factorised gates: interpolate top-down, token-path QDA, then pool."""
    lat = [F.conv2d(f, conv.weight, conv.bias) for f, conv in zip(feats, neck.laterals)]
    for i in (3, 2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
    for i in (0, 1, 2):
        b, c, h, w = lat[i].shape
        gated = neck.down_qda[i](lat[i].flatten(2).transpose(1, 2), text).transpose(1, 2).reshape(b, c, h, w)
        lat[i + 1] = lat[i + 1] + F.avg_pool2d(gated, kernel_size=2, stride=2, ceil_mode=True)
    return lat[3]


@pytest.mark.parametrize("gates", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("sizes", [[16, 8, 4, 2], [15, 8, 4, 2]])
def test_neck_gated_pooling_matches_old_formula_with_trained_qda(gates: tuple[bool, bool], sizes: list[int]) -> None:
    """Trained (random) QDA weights, each gate on or off, even and odd maps: outputs and gradients agree."""
    model = _tiny(cfg={"qda_channel_gate": gates[0], "qda_spatial_gate": gates[1]}).train()
    _randomise_v(model)
    neck = model.neck
    torch.manual_seed(6)
    feats = [torch.randn(2, c, s, s) for c, s in zip(model.stage_channels, sizes)]
    text = torch.randn(2, TEXT_DIM)
    probe = torch.randn(2, 32, 2, 2)

    def run(fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = [f.clone().requires_grad_(True) for f in feats]
        t = text.clone().requires_grad_(True)
        out = fn(inputs, t)
        (out * probe).sum().backward()
        grads = {f"feat{i}": f.grad for i, f in enumerate(inputs)} | {"text": t.grad}
        grads |= {n: p.grad.clone() for n, p in neck.named_parameters()}
        neck.zero_grad(set_to_none=True)
        return out.detach(), grads

    new_out, new_grads = run(lambda f, t: neck(f, t)[0])
    old_out, old_grads = run(lambda f, t: _neck_by_old_formula(neck, f, t))
    torch.testing.assert_close(new_out, old_out, rtol=1e-5, atol=1e-5)
    assert new_grads.keys() == old_grads.keys()
    for name in new_grads:
        torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("preset", ["lgrnet-swin-s", "lgrnet-r101"])
def test_inference_with_folded_projections_matches_factorised(preset: str) -> None:
    """Eval + inference mode folds every spatial gate (stage QDA on Swin's NHWC tokens, neck QDA on maps)."""
    from lgrnet.model.qda import DynamicLinear

    model = _tiny(preset)
    _randomise_v(model)
    images, mask, text = _inputs(2, 128)
    with torch.inference_mode():
        folded = model(images, mask, text)[0]
        spatial = [m.spatial_gate.linear for m in [*model.stage_qda, *model.neck.down_qda]]
        assert all(layer._folded is not None for layer in spatial)
        DynamicLinear.fold_at_inference = False
        try:
            factorised = model(images, mask, text)[0]
        finally:
            DynamicLinear.fold_at_inference = True
    torch.testing.assert_close(folded, factorised, rtol=1e-5, atol=1e-5)
