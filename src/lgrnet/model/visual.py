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

BatchNorm (ResNet backbones): with ``frozen_bn`` every BatchNorm keeps its statistics and affine fixed
(:class:`FrozenBatchNorm2d`, as DETR and TransVG train their pretrained ResNets); otherwise it trains, and under
DDP :func:`synchronise_batchnorm` makes it use the statistics of the global batch, so that W processes of batch B
train like one process of batch W x B.
"""

from __future__ import annotations

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lgrnet.config import ConfigError, VisualConfig
from lgrnet.model.checkpoints import LoadReport
from lgrnet.model.qda import QueryDynamicAttention
from lgrnet.model.swin import use_reference_window_order


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


# -------------------------------------------------------------------------------------------------------------
# BatchNorm: frozen for pretrained ResNets, synchronised across processes where it trains under DDP


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose statistics and affine stay fixed (the frozen BN DETR and TransVG train pretrained ResNets
    with).

    It normalises with the running statistics in training too, never updates them, and holds weight and bias as
    buffers (no gradient, not in the optimiser). The computation is ``F.batch_norm`` in inference mode, the very call
    ``nn.BatchNorm2d`` makes in eval mode, so eval outputs are bit-identical to those of the trainable layer with the
    same state (torchvision's ``FrozenBatchNorm2d`` folds scale and shift first, which rounds differently). The state
    dict has ``nn.BatchNorm2d``'s keys, so a checkpoint loads into either.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        weight, bias = self.weight.detach(), self.bias.detach()
        del self.weight, self.bias
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, eps=bn.eps)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                getattr(frozen, name).copy_(getattr(bn, name))
        return frozen.to(bn.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_batchnorm_(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a :class:`FrozenBatchNorm2d` with its state; returns
    how many. Another BatchNorm class (one fused with an activation, say) is an error rather than left training."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, FrozenBatchNorm2d):
            continue
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
            count += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(f"model.visual.frozen_bn: cannot freeze {type(child).__name__} layers "
                              f"(only torch.nn.BatchNorm2d)")
        else:
            count += freeze_batchnorm_(child)
    return count


class CrossProcessBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across processes, on CPU tensors.

    torch's ``nn.SyncBatchNorm`` (what :func:`synchronise_batchnorm` uses on GPUs) refuses CPU tensors, and DDP
    refuses it in a CPU model, so multi-process training on CPUs (gloo) gets this instead: the statistics come from
    two autograd-aware all-reduces (the sum with the sample count, then the sum of squared deviations from the
    global mean), whose backward all-reduces the gradients as torch's does; the running statistics get the same
    update (unbiased global variance). In eval mode, or in one process, it is ``nn.BatchNorm2d``'s computation.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_count = xf.new_tensor([x.numel() / x.shape[1]])
        sums = all_reduce(torch.cat([xf.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = xf - mean.reshape(shape)
        var = all_reduce(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(x.dtype)


def synchronise_batchnorm(module: nn.Module) -> nn.Module:
    """Every trainable BatchNorm below ``module`` (included) made to train on the global batch's statistics:
    ``torch.nn.SyncBatchNorm`` where its parameters are on a GPU, :class:`CrossProcessBatchNorm` on the CPU. The new
    layer shares the old one's parameters and buffers (an optimiser built before keeps working);
    :class:`FrozenBatchNorm2d` layers stay as they are. Call it before wrapping the model in DDP. Returns ``module``,
    or its replacement if it is itself a BatchNorm."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (FrozenBatchNorm2d, CrossProcessBatchNorm, nn.SyncBatchNorm)):
        state = module.running_mean if module.running_mean is not None else module.weight
        on_cpu = state is None or state.device.type == "cpu"
        cls = CrossProcessBatchNorm if on_cpu else nn.SyncBatchNorm
        synced = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        replacement = synchronise_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


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
        if cfg.frozen_bn:
            freeze_batchnorm_(self.backbone)
        self.stage_channels = channels
        self.stage_qda = _make_qda(channels, text_dim, cfg, init="trunc_normal" if cfg.kind == "swin" else "default")
        self.neck = SoftDownsampleNeck(channels, cfg.neck_channels, text_dim, cfg)
        # What loading the pretrained detector weights of ``cfg.checkpoint`` did (spec 10); the model builder
        # (lgrnet.model.builder.build_model) loads them, the constructor reads no file.
        self.checkpoint_report: LoadReport | None = None

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
