"""Pretrained initialisation of the visual extractor from mmdet Swin and DETR ResNet checkpoints (spec 10, 13).

The synthetic checkpoints are written from the official key layouts (Swin-Object-Detection / mmdet Mask R-CNN,
DETR's torchvision ResNet body), not from our model's own keys.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import tiny_twin

from lgrnet.config import load_config
from lgrnet.errors import CheckpointError
from lgrnet.model.builder import build_model
from lgrnet.model.checkpoints import (
    load_resnet_detr_checkpoint,
    load_swin_mmdet_checkpoint,
    load_visual_checkpoint,
    read_state_dict,
)
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.visual import VisualExtractor


def mmdet_swin_state_dict(embed: int = 96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24), window: int = 7,
                          neck: int = 256, with_qdatt: bool = False, text: int = 768, rank: int = 30,
                          reduction: int = 16) -> dict[str, torch.Tensor]:
    """A Mask R-CNN Swin state dict in the official Swin-Object-Detection / mmdet naming (random values)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {"backbone.patch_embed.proj.weight": r(embed, 3, 4, 4), "backbone.patch_embed.proj.bias": r(embed),
          "backbone.patch_embed.norm.weight": r(embed), "backbone.patch_embed.norm.bias": r(embed)}
    for s, (depth, nh) in enumerate(zip(depths, heads)):
        c = embed * 2 ** s
        for b in range(depth):
            p = f"backbone.layers.{s}.blocks.{b}."
            sd.update({
                p + "norm1.weight": r(c), p + "norm1.bias": r(c),
                p + "attn.relative_position_bias_table": r((2 * window - 1) ** 2, nh),
                p + "attn.relative_position_index": torch.randint(0, 169, (window ** 2, window ** 2), generator=g),
                p + "attn.qkv.weight": r(3 * c, c), p + "attn.qkv.bias": r(3 * c),
                p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
                p + "norm2.weight": r(c), p + "norm2.bias": r(c),
                p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
                p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c),
            })
        if s < len(depths) - 1:
            p = f"backbone.layers.{s}.downsample."
            sd.update({p + "norm.weight": r(4 * c), p + "norm.bias": r(4 * c), p + "reduction.weight": r(2 * c, 4 * c)})
        if with_qdatt:
            sd.update(_qdatt(f"backbone.layers.{s}.qdatt.", c, text, rank, reduction, r))
        sd[f"backbone.norm{s}.weight"], sd[f"backbone.norm{s}.bias"] = r(c), r(c)
        sd[f"neck.lateral_convs.{s}.conv.weight"], sd[f"neck.lateral_convs.{s}.conv.bias"] = r(neck, c, 1, 1), r(neck)
        sd[f"neck.fpn_convs.{s}.conv.weight"] = r(neck, neck, 3, 3)  # present in plain mmdet FPN checkpoints
    sd.update({"rpn_head.rpn_conv.weight": r(neck, neck, 3, 3), "rpn_head.rpn_conv.bias": r(neck),
               "rpn_head.rpn_cls.weight": r(3, neck, 1, 1), "rpn_head.rpn_cls.bias": r(3),
               "rpn_head.rpn_reg.weight": r(12, neck, 1, 1), "rpn_head.rpn_reg.bias": r(12),
               "roi_head.bbox_head.fc_cls.weight": r(81, 1024)})
    return sd


def _qdatt(prefix: str, c: int, text: int, rank: int, reduction: int, r) -> dict[str, torch.Tensor]:
    h = c // reduction
    out = {}
    for name, n, m in (("ChannelGate.mlp.0.decoder.", c, h), ("ChannelGate.mlp.2.decoder.", h, c),
                       ("SpatialGate.spatial.decoder.", c, 1)):
        out[prefix + name + "decoder.weight"] = r((n + 1) * rank, text)
        out[prefix + name + "decoder.bias"] = r((n + 1) * rank)
        out[prefix + name + "V"] = r(rank, m)
    return out


def detr_resnet50_state_dict() -> dict[str, torch.Tensor]:
    """DETR's ``model`` dict: torchvision ResNet-50 body (frozen BN: no counters) under ``backbone.0.body.``."""
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": r(c) for k in ("weight", "bias", "running_mean")} | {f"{prefix}.running_var": r(c).abs()}

    body = "backbone.0.body."
    sd = {body + "conv1.weight": r(64, 3, 7, 7)} | bn(body + "bn1", 64)
    in_c = 64
    for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"{body}layer{layer}.{b}."
            sd[p + "conv1.weight"] = r(width, in_c, 1, 1)
            sd |= bn(p + "bn1", width)
            sd[p + "conv2.weight"] = r(width, width, 3, 3)
            sd |= bn(p + "bn2", width)
            sd[p + "conv3.weight"] = r(4 * width, width, 1, 1)
            sd |= bn(p + "bn3", 4 * width)
            if b == 0:
                sd[p + "downsample.0.weight"] = r(4 * width, in_c, 1, 1)
                sd |= bn(p + "downsample.1", 4 * width)
            in_c = 4 * width
    sd |= {"transformer.encoder.layers.0.linear1.weight": r(2048, 256), "class_embed.weight": r(92, 256),
           "query_embed.weight": r(100, 256), "input_proj.weight": r(256, 2048, 1, 1),
           "backbone.0.body.fc.weight": r(1000, 2048)}
    return sd


@pytest.fixture(scope="module")
def swin_s() -> VisualExtractor:
    """Swin-S with the real backbone and neck; QDA shrunk (text 16, rank 2): the detector has none of it anyway."""
    cfg = load_config("lgrnet-swin-s").model.visual
    cfg.qda_rank = 2
    return VisualExtractor(cfg, 16, 640)


def test_mmdet_swin_s_loads_with_no_missing_backbone_keys(swin_s: VisualExtractor, tmp_path: Path) -> None:
    sd = mmdet_swin_state_dict()
    path = tmp_path / "mask_rcnn_swin_small_patch4_window7.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    report = load_swin_mmdet_checkpoint(swin_s, path)
    assert report.missing == [] and report.unexpected == [] and report.ok
    assert report.expected_missing and all("qda" in k for k in report.expected_missing)
    assert len(report.expected_missing) == 7 * 9  # 4 backbone + 3 neck QDA modules, 9 tensors each
    assert all(k.startswith(("rpn_head.", "roi_head.", "neck.fpn_convs.")) or k.endswith("relative_position_index")
               for k in report.ignored)
    own = dict(swin_s.named_parameters())
    assert not [k for k in own if k.startswith(("backbone.", "neck.laterals.")) and k not in report.loaded]
    # Values land where they belong; downsample moves from the end of stage s to the start of stage s+1.
    assert torch.equal(own["backbone.layers.1.downsample.reduction.weight"],
                       sd["backbone.layers.0.downsample.reduction.weight"])
    assert torch.equal(own["backbone.layers.3.downsample.norm.bias"], sd["backbone.layers.2.downsample.norm.bias"])
    assert torch.equal(own["backbone.layers.2.blocks.17.attn.relative_position_bias_table"],
                       sd["backbone.layers.2.blocks.17.attn.relative_position_bias_table"])
    assert torch.equal(own["backbone.norm3.weight"], sd["backbone.norm3.weight"])
    assert torch.equal(own["neck.laterals.2.weight"], sd["neck.lateral_convs.2.conv.weight"])
    assert "loaded" in report.summary() and "MISSING" not in report.summary()


def test_qrnet_qdatt_keys_load_into_qda(tmp_path: Path) -> None:
    cfg = tiny_twin("lgrnet-swin-s").model.visual
    visual = VisualExtractor(cfg, 32, 128)
    sd = mmdet_swin_state_dict(embed=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4), neck=32, with_qdatt=True,
                               text=32, rank=4, reduction=4)
    path = tmp_path / "qrnet.pth"
    torch.save({"state_dict": sd}, path)
    report = load_visual_checkpoint(visual, path)
    assert report.missing == [] and report.unexpected == []
    assert [k for k in report.expected_missing] == [k for k, _ in visual.named_parameters() if "down_qda" in k]
    assert torch.equal(visual.stage_qda[2].channel_gate.mlp[2].V, sd["backbone.layers.2.qdatt.ChannelGate.mlp.2.decoder.V"])
    assert torch.equal(visual.stage_qda[0].spatial_gate.linear.proj.weight,
                       sd["backbone.layers.0.qdatt.SpatialGate.spatial.decoder.decoder.weight"])
    # The same file into a model without query modulation: QDA tensors are ignored, nothing is missing.
    cfg.query_modulation = False
    plain = VisualExtractor(cfg, 32, 128)
    report = load_swin_mmdet_checkpoint(plain, path)
    assert report.ok and report.expected_missing == [] and any("qdatt" in k for k in report.ignored)


def test_mmdet_patch_merging_order_matches_timm() -> None:
    """mmdet concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]; timm's layout must agree."""
    visual = VisualExtractor(tiny_twin("lgrnet-swin-s").model.visual, 32, 128)
    merge = visual.backbone.layers[1].downsample
    x = torch.randn(2, 6, 8, 16)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    expected = F.linear(F.layer_norm(cat, (64,), merge.norm.weight, merge.norm.bias, merge.norm.eps),
                        merge.reduction.weight)
    torch.testing.assert_close(merge(x), expected)


def test_detr_resnet50_loads_with_no_missing_backbone_keys(tmp_path: Path) -> None:
    cfg = tiny_twin("lgrnet-r101").model.visual
    cfg.timm_name = "resnet50"
    visual = VisualExtractor(cfg, 32, 128)
    sd = detr_resnet50_state_dict()
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": sd, "epoch": 499}, path)
    report = load_visual_checkpoint(visual, path)
    assert report.missing == [] and report.unexpected == []
    backbone_keys = [k for k in visual.state_dict() if k.startswith("backbone.")]
    assert not [k for k in backbone_keys if k not in report.loaded and not k.endswith("num_batches_tracked")]
    assert all("qda" in k or k.startswith("neck.") or k.endswith("num_batches_tracked")
               for k in report.expected_missing)
    assert {"class_embed.weight", "transformer.encoder.layers.0.linear1.weight",
            "backbone.0.body.fc.weight"} <= set(report.ignored)
    state = visual.state_dict()
    assert torch.equal(state["backbone.layer3.5.bn3.running_var"], sd["backbone.0.body.layer3.5.bn3.running_var"])
    assert torch.equal(state["backbone.layer1.0.downsample.0.weight"], sd["backbone.0.body.layer1.0.downsample.0.weight"])
    # TransVG stores the same body under visumodel.
    transvg = tmp_path / "transvg.pth"
    torch.save({"model": {f"visumodel.{k}": v for k, v in sd.items()}}, transvg)
    assert load_resnet_detr_checkpoint(visual, transvg).missing == []


def test_broken_unsafe_and_mismatched_files_raise_checkpoint_error(tmp_path: Path) -> None:
    visual = VisualExtractor(tiny_twin("lgrnet-swin-s").model.visual, 32, 128)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_swin_mmdet_checkpoint(visual, broken)
    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps({"state_dict": {}, "evil": pickle.PickleError("x")}, protocol=2))
    with pytest.raises(CheckpointError, match="unsafe.pth.*Unsupported global"):
        read_state_dict(unsafe)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_swin_mmdet_checkpoint(visual, tmp_path / "missing.pth")
    wrong = tmp_path / "swin_s_into_tiny.pth"
    torch.save({"state_dict": mmdet_swin_state_dict(depths=(1, 1, 2, 1))}, wrong)
    with pytest.raises(CheckpointError, match=r"swin_s_into_tiny.pth.*patch_embed.proj.weight"):
        load_swin_mmdet_checkpoint(visual, wrong)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, unrelated)
    with pytest.raises(CheckpointError, match="no key matches"):
        load_swin_mmdet_checkpoint(visual, unrelated)
    with pytest.raises(CheckpointError, match="kind 'resnet'"):
        load_resnet_detr_checkpoint(visual, unrelated)


def test_unknown_backbone_keys_are_reported_unexpected(tmp_path: Path) -> None:
    visual = VisualExtractor(tiny_twin("lgrnet-swin-s").model.visual, 32, 128)
    sd = mmdet_swin_state_dict(embed=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4), neck=32)
    sd["backbone.absolute_pos_embed"] = torch.zeros(1, 16, 32, 32)
    del sd["backbone.norm2.bias"]
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": sd}, path)
    report = load_swin_mmdet_checkpoint(visual, path)
    assert report.unexpected == ["backbone.absolute_pos_embed"] and report.missing == ["backbone.norm2.bias"]
    assert not report.ok and "MISSING 1" in report.summary() and "UNEXPECTED 1" in report.summary()


def test_config_checkpoint_is_loaded_by_the_builder_not_the_constructor(tmp_path: Path) -> None:
    sd = mmdet_swin_state_dict(embed=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4), neck=32)
    path = tmp_path / "tiny_mask_rcnn.pth"
    torch.save({"state_dict": sd}, path)
    cfg = tiny_twin("lgrnet-swin-s")
    cfg.model.visual.checkpoint = str(tmp_path / "absent.pth")
    torch.manual_seed(0)
    plain = LGRNet(cfg.model, cfg.loss)  # the constructor reads no file
    assert plain.visual.checkpoint_report is None
    with pytest.raises(CheckpointError, match="absent.pth"):
        build_model(cfg.model, cfg.loss)
    cfg.model.visual.checkpoint = str(path)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss)
    visual = model.visual
    assert visual.checkpoint_report is not None and visual.checkpoint_report.ok
    assert torch.equal(visual.backbone.patch_embed.proj.weight, sd["backbone.patch_embed.proj.weight"])
    assert not torch.equal(plain.visual.backbone.patch_embed.proj.weight, sd["backbone.patch_embed.proj.weight"])
    # mmdet's stage-0 patch merging is timm's start of stage 1; the FPN laterals are the neck's
    assert torch.equal(visual.backbone.layers[1].downsample.reduction.weight,
                       sd["backbone.layers.0.downsample.reduction.weight"])
    assert torch.equal(visual.neck.laterals[3].bias, sd["neck.lateral_convs.3.conv.bias"])
    # what the file lacks keeps the random init the plain constructor drew for the seed
    built, drawn = model.state_dict(), plain.state_dict()
    for key in ("visual.stage_qda.0.channel_gate.mlp.0.proj.weight", "reasoning.layers.0.linear1.weight",
                "text.encoder.embeddings.word_embeddings.weight"):
        assert torch.equal(built[key], drawn[key]), key
