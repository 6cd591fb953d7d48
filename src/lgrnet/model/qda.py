"""Query-dynamic attention (QDA): QRNet's text-conditioned channel and spatial gates (spec section 3.2).

LGR-NET's reference visual extractor (paper III-A as implemented) modulates every Swin stage output and every
soft down-sampling step of the neck with the raw [CLS] feature of the expression. Each gate is an ordinary
CBAM-style gate whose linear layers are *dynamic*: their weights are produced from the text by a low-rank
factorisation ``P = U(t) V`` (:class:`DynamicLinear`). ``V`` starts at zero, so a freshly built QDA outputs
exactly ``0.25 * x`` (channel gate 0.5 times spatial gate 0.5).

Parameter layout (per QDA on ``C`` channels, text width ``T``, rank ``k``, reduction ``r``, ``h = C // r``)::

    channel_gate.mlp.0  DynamicLinear(C -> h): proj Linear(T, (C+1)k), V [k, h]
    channel_gate.mlp.2  DynamicLinear(h -> C): proj Linear(T, (h+1)k), V [k, C]
    spatial_gate.linear DynamicLinear(C -> 1): proj Linear(T, (C+1)k), V [k, 1]

which mirrors the reference's ``qdatt.ChannelGate.mlp.{0,2}.decoder.decoder`` / ``.decoder.V`` and
``qdatt.SpatialGate.spatial.decoder.decoder`` / ``.decoder.V`` (see :data:`REFERENCE_QDA_KEY_MAP`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

# Our parameter-name suffix -> the reference (QRNet) suffix below its ``qdatt.`` module.
REFERENCE_QDA_KEY_MAP: dict[str, str] = {
    "channel_gate.mlp.0.proj.weight": "ChannelGate.mlp.0.decoder.decoder.weight",
    "channel_gate.mlp.0.proj.bias": "ChannelGate.mlp.0.decoder.decoder.bias",
    "channel_gate.mlp.0.V": "ChannelGate.mlp.0.decoder.V",
    "channel_gate.mlp.2.proj.weight": "ChannelGate.mlp.2.decoder.decoder.weight",
    "channel_gate.mlp.2.proj.bias": "ChannelGate.mlp.2.decoder.decoder.bias",
    "channel_gate.mlp.2.V": "ChannelGate.mlp.2.decoder.V",
    "spatial_gate.linear.proj.weight": "SpatialGate.spatial.decoder.decoder.weight",
    "spatial_gate.linear.proj.bias": "SpatialGate.spatial.decoder.decoder.bias",
    "spatial_gate.linear.V": "SpatialGate.spatial.decoder.V",
}


class DynamicLinear(nn.Module):
    """A per-sample linear map ``n -> m`` whose weight and bias are generated from the text (spec 3.2).

    ``U = reshape(proj(t), [B, n+1, k])``, ``P = U V`` with a learnable ``V [k, m]`` initialised to zeros;
    rows ``0..n-1`` of ``P`` are the weight, row ``n`` the bias: ``y = x W_b + b_b``.
    """

    def __init__(self, in_features: int, out_features: int, text_dim: int, rank: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.proj = nn.Linear(text_dim, (in_features + 1) * rank)
        self.V = nn.Parameter(torch.zeros(rank, out_features))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x [B, N, n], text [B, T] -> [B, N, m]."""
        u = self.proj(text).view(text.shape[0], self.in_features + 1, self.rank)
        p = u @ self.V.to(u.dtype)  # [B, n+1, m]
        weight, bias = p[:, :-1], p[:, -1:]
        return torch.baddbmm(bias.to(x.dtype), x, weight.to(x.dtype))


class _TextSequential(nn.ModuleList):
    """DynamicLinear -> ReLU -> DynamicLinear; indices 0 and 2 as in the reference ``mlp`` Sequential."""

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self[2](self[1](self[0](x, text)), text)


class ChannelGate(nn.Module):
    """``x * sigmoid(M(mean_N x) + M(max_N x))`` with a shared text-conditioned MLP ``M`` (CBAM channel gate)."""

    def __init__(self, channels: int, text_dim: int, rank: int, reduction: int) -> None:
        super().__init__()
        # A reduction larger than the width would leave no hidden unit; keep at least one (tiny configs only).
        hidden = max(1, channels // reduction)
        self.mlp = _TextSequential([
            DynamicLinear(channels, hidden, text_dim, rank),
            nn.ReLU(),
            DynamicLinear(hidden, channels, text_dim, rank),
        ])

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # Pooling covers every position, padding included, as in the reference (spec 15.10).
        pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)  # [B, 2, C]
        logits = self.mlp(pooled, text).sum(dim=1, keepdim=True)  # M(avg) + M(max): [B, 1, C]
        return x * torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """``x * sigmoid(DynLin(C -> 1)(x))``: one text-conditioned scalar gate per position."""

    def __init__(self, channels: int, text_dim: int, rank: int) -> None:
        super().__init__()
        self.linear = DynamicLinear(channels, 1, text_dim, rank)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.linear(x, text))


class QueryDynamicAttention(nn.Module):
    """QRNet query-dynamic attention on a token map ``x [B, N, C]`` conditioned on ``text [B, text_dim]``.

    Channel gate then spatial gate (spec 3.2); either can be disabled (both off: identity). ``init``:
    ``"trunc_normal"`` (backbone QDA, Swin's init: trunc-normal std 0.02, bias 0) or ``"default"`` (neck QDA,
    PyTorch's default Linear init). ``V`` is always zero at construction.
    """

    def __init__(self, channels: int, text_dim: int, rank: int = 30, reduction: int = 16,
                 channel_gate: bool = True, spatial_gate: bool = True,
                 init: Literal["trunc_normal", "default"] = "default") -> None:
        super().__init__()
        self.channels = channels
        self.channel_gate = ChannelGate(channels, text_dim, rank, reduction) if channel_gate else None
        self.spatial_gate = SpatialGate(channels, text_dim, rank) if spatial_gate else None
        if init == "trunc_normal":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
        elif init != "default":
            raise ValueError(f"QueryDynamicAttention: unknown init {init!r} (use 'trunc_normal' or 'default')")

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"QueryDynamicAttention expects x [B, N, {self.channels}], got {list(x.shape)}")
        if self.channel_gate is not None:
            x = self.channel_gate(x, text)
        if self.spatial_gate is not None:
            x = self.spatial_gate(x, text)
        return x

    def forward_map(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Same gates on a channels-first map ``[B, C, H, W]`` (neck down-samplers, ResNet stages)."""
        b, c, h, w = x.shape
        tokens = self.forward(x.flatten(2).transpose(1, 2), text)
        return tokens.transpose(1, 2).reshape(b, c, h, w)
