"""Visual extractor (paper III-A, Fig. 2 left; spec section 3): timm backbone + QDA + soft down-sampling neck.

The reference ("QRNet" query-modulated Swin-S + ``NoFpnSoftDownSample`` neck) runs the Swin stage by stage and,
after the last block of every stage, gates the map with :class:`~lgrnet.model.qda.QueryDynamicAttention`
conditioned on the expression's raw [CLS] feature. The gated map feeds both the stage output (LayerNorm
``norm{i}``) and the next stage. The neck (spec 3.3) projects the four stage outputs with 1x1 laterals, adds them
top-down (nearest upsampling) and bottom-up (2x2 average pooling of the - optionally QDA-gated - finer level), and
subsamples the H/32 level by 2 to get H/64. Only the H/32 and H/64 maps are returned, flattened row-major with
their padding masks (spec 3.4). A backbone with fewer stages (``resnet`` with ``out_indices`` (1, 2, 3), a
three-stage Swin) moves both maps one octave finer: the neck always returns its coarsest level and its
2x subsample, at strides ``out_stride`` and ``2 * out_stride``.

With ``query_modulation=False`` (the paper's text, spec 3.5/14) no QDA module exists: plain backbone + neck.
A ResNet (timm ``features_only``) can replace the Swin (paper Table III); the same neck and QDA placement apply.

Parameter names: the timm backbone proper lives under ``backbone.`` (Swin output norms ``backbone.norm{0..3}``),
backbone QDA under ``stage_qda.{i}``, neck laterals under ``neck.laterals.{i}``, neck QDA under
``neck.down_qda.{i}``; every QDA parameter name contains ``qda``.
"""

from __future__ import annotations

import logging

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lgrnet.config import ConfigError, VisualConfig
from lgrnet.model.qda import QueryDynamicAttention
from lgrnet.model.swin import use_reference_window_order

log = logging.getLogger(__name__)


class SoftDownsampleNeck(nn.Module):
    """Spec 3.3 (reference ``NoFpnSoftDownSample``): laterals, top-down sum, QDA-gated bottom-up sum, subsample.

    Returns the H/32 level ``L_3`` and ``L_4 = L_3[..., ::2, ::2]`` (a kernel-1 stride-2 max pool).
    """

    def __init__(self, in_channels: list[int], out_channels: int, text_dim: int, cfg: VisualConfig) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.down_qda = _make_qda([out_channels] * (len(in_channels) - 1), text_dim, cfg, init="default")

    def forward(self, features: list[torch.Tensor], text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features)]
        # Top-down: each level receives the already-updated coarser one, nearest-upsampled (plain FPN, sum).
        # The laterals' outputs belong to the neck, so the sum may go into them in place.
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = add_upsampled_(levels[i - 1], levels[i])
        # Bottom-up soft down-sampling: L_{i+1} += avgpool2x2(QDA_i(L_i)). ceil_mode keeps odd maps working
        # (the reference crashes there, spec 15.9); for sizes divisible by 64 every map is even anyway.
        # The QDA gates and pools in one call (pool=True): its channel scale lands after the pooling and the gated
        # full-resolution map is never formed (the stride-4 level is the neck's largest memory traffic).
        for i in range(len(levels) - 1):
            if self.down_qda is not None:
                down = self.down_qda[i](levels[i], text, pool=True)
            else:
                down = F.avg_pool2d(levels[i], kernel_size=2, stride=2, ceil_mode=True)
            if down.shape[-2:] != levels[i + 1].shape[-2:]:
                raise ValueError(f"neck level {i} pooled to {tuple(down.shape[-2:])}, "
                                 f"level {i + 1} is {tuple(levels[i + 1].shape[-2:])}")
            levels[i + 1] = levels[i + 1] + down
        top = levels[-1]
        return top, top[..., ::2, ::2]


def add_upsampled_(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")``, bit for bit (spec 3.3 step 2).

    When ``fine`` is exactly twice ``coarse`` in both directions (every neck step at sizes divisible by 64) the
    sum is a broadcast add on a ``[B, C, h/2, 2, w/2, 2]`` view, written into ``fine`` in place: no upsampled
    map is allocated and the largest level is read and written once (the stride-4 step dominated the neck's CPU
    time). Any other ratio (odd sizes) falls back to interpolate + add and leaves ``fine`` untouched.
    """
    b, c, h, w = fine.shape
    hc, wc = coarse.shape[-2:]
    if h == 2 * hc and w == 2 * wc:
        # Splitting a dimension is always a view, whatever the strides (channels-last included).
        fine.view(b, c, hc, 2, wc, 2).add_(coarse[:, :, :, None, :, None])
        return fine
    return fine + F.interpolate(coarse, size=(h, w), mode="nearest")


def _make_qda(channels: list[int], text_dim: int, cfg: VisualConfig, init: str) -> nn.ModuleList | None:
    if not cfg.query_modulation:
        return None
    return nn.ModuleList(
        QueryDynamicAttention(c, text_dim, rank=cfg.qda_rank, reduction=cfg.qda_reduction,
                              channel_gate=cfg.qda_channel_gate, spatial_gate=cfg.qda_spatial_gate, init=init)
        for c in channels
    )


def resize_mask(image_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-resize a pad mask [B, H, W] (True = pad) to ``size`` (spec 3.4: samples pixel (s*i, s*j))."""
    return F.interpolate(image_mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


class VisualExtractor(nn.Module):
    """Backbone + QDA + neck -> visual tokens ``[B, (S/32)^2 + (S/64)^2, C]`` and their pad mask (True = pad)."""

    def __init__(self, cfg: VisualConfig, text_dim: int, image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_size = image_size
        self.text_dim = text_dim
        if cfg.kind == "swin":
            channels = self._build_swin(cfg, image_size)
        elif cfg.kind == "resnet":
            channels = self._build_resnet(cfg)
        else:
            raise ConfigError(f"model.visual.kind: unknown backbone kind {cfg.kind!r}")
        if image_size <= 0 or image_size % (2 * self.out_stride):
            raise ConfigError(f"model.image_size: {image_size} must be a positive multiple of {2 * self.out_stride} "
                              f"(twice the backbone's output stride {self.out_stride})")
        self.stage_channels = channels
        self.stage_qda = _make_qda(channels, text_dim, cfg, init="trunc_normal" if cfg.kind == "swin" else "default")
        self.neck = SoftDownsampleNeck(channels, cfg.neck_channels, text_dim, cfg)
        # Pretrained detector weights (spec 10), like the reference which loads them when the model is built.
        self.checkpoint_report = None
        if cfg.checkpoint:
            from lgrnet.model.checkpoints import load_visual_checkpoint

            self.checkpoint_report = load_visual_checkpoint(self, cfg.checkpoint)
            (log.info if self.checkpoint_report.ok else log.warning)(self.checkpoint_report.summary())

    # ---------------------------------------------------------------------------------------------------------
    # Backbones

    def _build_swin(self, cfg: VisualConfig, image_size: int) -> list[int]:
        # strict_img_size=False: any size (masks built per forward); always_partition: keep the full window even
        # on maps smaller than it, as the reference does (and keep the checkpoints' relative-position tables).
        swin = timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, drop_path_rate=cfg.drop_path_rate,
                                 img_size=image_size, strict_img_size=False, always_partition=True,
                                 **cfg.timm_kwargs)
        if not hasattr(swin, "layers") or not hasattr(swin, "patch_embed"):
            raise ConfigError(f"model.visual.timm_name: {cfg.timm_name!r} is not a timm Swin Transformer")
        channels = [int(info["num_chs"]) for info in swin.feature_info]
        self.out_stride = int(swin.feature_info[-1]["reduction"])
        # Reference output norms norm0..norm3 replace timm's single classifier norm; the head is dropped.
        swin.norm = nn.Identity()
        swin.head = nn.Identity()
        for i, c in enumerate(channels):
            swin.add_module(f"norm{i}", nn.LayerNorm(c))
        if cfg.swin_pad_before_shift:
            window = swin.layers[0].blocks[0].attn.window_size[0]
            use_reference_window_order(swin, window)
        self.backbone = swin
        return channels

    def _build_resnet(self, cfg: VisualConfig) -> list[int]:
        # features_only builds the network only up to the last requested stage.
        net = timm.create_model(cfg.timm_name, pretrained=False, features_only=True,
                                out_indices=tuple(cfg.out_indices), drop_path_rate=cfg.drop_path_rate,
                                **cfg.timm_kwargs)
        self.backbone = net
        self.out_stride = int(net.feature_info.reduction()[-1])
        self._resnet_outputs = list(net.feature_info.module_name())
        return list(net.feature_info.channels())

    def _swin_features(self, images: torch.Tensor, text: torch.Tensor | None) -> list[torch.Tensor]:
        swin = self.backbone
        x = swin.patch_embed(images)  # [B, H/4, W/4, C] (NHWC)
        outs = []
        for i, stage in enumerate(swin.layers):
            x = stage(x)  # timm: patch merging (start of stage i > 0), then the blocks
            if self.stage_qda is not None:
                b, h, w, c = x.shape
                x = self.stage_qda[i](x.reshape(b, h * w, c), text).reshape(b, h, w, c)
            outs.append(getattr(swin, f"norm{i}")(x).permute(0, 3, 1, 2))
        return outs

    def _resnet_features(self, images: torch.Tensor, text: torch.Tensor | None) -> list[torch.Tensor]:
        x = images
        outs = []
        for name, module in self.backbone.items():
            x = module(x)
            if name in self._resnet_outputs:
                if self.stage_qda is not None:
                    x = self.stage_qda[len(outs)].forward_map(x, text)
                outs.append(x)
        return outs

    # ---------------------------------------------------------------------------------------------------------

    @property
    def out_channels(self) -> int:
        return self.cfg.neck_channels

    @property
    def token_shapes(self) -> list[tuple[int, int]]:
        """Shapes of the flattened maps at the configured image size: [(S/32, S/32), (S/64, S/64)] for the
        reference's backbones, [(S/s, S/s), (S/2s, S/2s)] for output stride s in general."""
        return [(self.image_size // s, self.image_size // s) for s in (self.out_stride, 2 * self.out_stride)]

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor,
                text_cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S], image_mask [B,S,S] (True = pad), text_cond [B,text_dim] (None only without QDA).

        Returns tokens [B, Nv, C] (H/32 map first, then H/64, row-major) and mask [B, Nv] (True = pad).
        """
        multiple = 2 * self.out_stride
        if images.shape[-1] % multiple or images.shape[-2] % multiple:
            raise ValueError(f"VisualExtractor: image size {tuple(images.shape[-2:])} is not a multiple of {multiple}")
        if self.cfg.query_modulation:
            if text_cond is None:
                raise ValueError("VisualExtractor: query modulation is on, text_cond [B, text_dim] is required")
            if text_cond.shape != (images.shape[0], self.text_dim):
                raise ValueError(f"VisualExtractor: text_cond must be [{images.shape[0]}, {self.text_dim}], "
                                 f"got {list(text_cond.shape)}")
        if self.cfg.kind == "swin":
            features = self._swin_features(images, text_cond)
        else:
            features = self._resnet_features(images, text_cond)
        maps = self.neck(features, text_cond)
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        mask = torch.cat([resize_mask(image_mask, tuple(m.shape[-2:])).flatten(1) for m in maps], dim=1)
        return tokens, mask
