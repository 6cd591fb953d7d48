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

Speed (same function, same state dict; docs/performance.md "After (2)"): at inference a DynamicLinear with
``m < k`` folds ``V`` into its text projection once (a cached, ``m/k`` times smaller matrix to read per forward),
and on channels-first maps the gates are applied from their factors (``x * g_c * s``, optionally 2x2-pooled
before the channel scale) instead of forming the channel-gated map.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
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

    At inference (eval mode, gradients off, not while ``torch.compile`` traces) a layer with ``m < k`` uses
    ``P = reshape(W_f t + b_f, [B, n+1, m])`` with ``W_f[(i, j), :] = sum_r proj.weight[(i, r), :] V[r, j]``
    (likewise ``b_f``): the same ``P`` up to rounding from a ``(n+1) m x T`` matrix instead of ``(n+1) k x T``
    (30x smaller for the spatial gate, whose batch-1 cost is reading ``proj.weight``). The folded matrix is
    cached and rebuilt whenever ``proj.weight``, ``proj.bias`` or ``V`` change (parameter object, version
    counter, storage), so ``load_state_dict``, an optimiser step or ``.to()`` never leave it stale; ``train()``
    drops it. Writes through ``.data`` bypass the version counter: call :meth:`clear_folded_cache` after them.
    Set ``fold_at_inference = False`` (class or instance) to always use the factorised form.
    """

    fold_at_inference: bool = True

    def __init__(self, in_features: int, out_features: int, text_dim: int, rank: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.proj = nn.Linear(text_dim, (in_features + 1) * rank)
        self.V = nn.Parameter(torch.zeros(rank, out_features))
        # Plain attributes, not buffers: never in the state dict, never moved by .to() (rebuilt instead).
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None
        self._folded_from: tuple[tuple[torch.Tensor, int, int], ...] | None = None

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x [B, N, n], text [B, T] -> [B, N, m]."""
        weight, bias = self.generate(text)
        return torch.baddbmm(bias.to(x.dtype), x, weight.to(x.dtype))

    def generate(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sample weight ``[B, n, m]`` and bias ``[B, 1, m]`` for ``text [B, T]``."""
        folded = self.folded_projection()
        if folded is None:
            u = self.proj(text).view(text.shape[0], self.in_features + 1, self.rank)
            p = u @ self.V.to(u.dtype)  # [B, n+1, m]
        else:
            p = F.linear(text, *folded).view(text.shape[0], self.in_features + 1, self.out_features)
        return p[:, :-1], p[:, -1:]

    def folded_projection(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(W_f [(n+1) m, T], b_f [(n+1) m])`` when this call may use them (see the class), else None."""
        if (self.training or torch.is_grad_enabled() or not self.fold_at_inference
                or self.out_features >= self.rank or torch.compiler.is_compiling()):
            return None
        sources = (self.proj.weight, self.proj.bias, self.V)
        if any(p.is_inference() for p in sources):  # inference tensors have no version counter to watch
            return None
        # Keeping the parameter objects in the key also keeps their storage alive, so a new storage cannot
        # reuse the old address and pass for unchanged.
        key = tuple((p, p._version, p.data_ptr()) for p in sources)
        if self._folded is None or not _same_sources(key, self._folded_from):
            self._folded = self._fold()
            self._folded_from = key
        return self._folded

    def clear_folded_cache(self) -> None:
        self._folded = None
        self._folded_from = None

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias, v = self.proj.weight, self.proj.bias, self.V
        dtype = weight.dtype
        # Summed in at least fp32 whatever the parameters' dtype: the fold should add no rounding of its own.
        acc = torch.promote_types(dtype, torch.float32)
        w3 = weight.to(acc).view(self.in_features + 1, self.rank, weight.shape[1])
        folded_weight = torch.einsum("irt,rj->ijt", w3, v.to(acc)).reshape(-1, weight.shape[1])
        folded_bias = (bias.to(acc).view(self.in_features + 1, self.rank) @ v.to(acc)).reshape(-1)
        return folded_weight.to(dtype).contiguous(), folded_bias.to(bias.dtype)

    def train(self, mode: bool = True) -> DynamicLinear:
        if mode:
            self.clear_folded_cache()  # training never reads it; do not hold the memory meanwhile
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # .to() / .half() / .cuda() may swap the parameters' storage in place of the version counter.
        self.clear_folded_cache()
        return super()._apply(fn, recurse)


def _same_sources(key: tuple[tuple[torch.Tensor, int, int], ...],
                  cached: tuple[tuple[torch.Tensor, int, int], ...] | None) -> bool:
    return cached is not None and all(
        p is q and version == cached_version and ptr == cached_ptr
        for (p, version, ptr), (q, cached_version, cached_ptr) in zip(key, cached))


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
        return x * self.scale(x.mean(dim=1), x.amax(dim=1), text)[:, None]

    def scale(self, mean: torch.Tensor, amax: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The gate ``sigmoid(M(mean) + M(max)) [B, C]`` from the per-channel mean and max over positions."""
        logits = self.mlp(torch.stack([mean, amax], dim=1), text).sum(dim=1)  # M(avg) + M(max)
        return torch.sigmoid(logits)


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

    def forward(self, x: torch.Tensor, text: torch.Tensor, pool: bool = False) -> torch.Tensor:
        """Gate tokens ``x [B, N, C]``, or a channels-first map ``x [B, C, H, W]`` (see :meth:`forward_map`).

        ``pool=True`` (maps only) returns ``avg_pool2d(gated map, 2, 2, ceil_mode=True)``, the neck's
        soft down-sampling step, without forming the gated full-resolution map.
        """
        if x.dim() == 4 and x.shape[1] == self.channels:
            return self._gate_map(x, text, pool)
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"QueryDynamicAttention expects x [B, N, {self.channels}] or a map "
                             f"[B, {self.channels}, H, W], got {list(x.shape)}")
        if pool:
            raise ValueError("QueryDynamicAttention: pool=True needs a map [B, C, H, W], not tokens")
        if self.channel_gate is not None:
            x = self.channel_gate(x, text)
        if self.spatial_gate is not None:
            x = self.spatial_gate(x, text)
        return x

    def forward_map(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Same gates on a channels-first map ``[B, C, H, W]`` (ResNet stages); ``self(x, text)`` on a map."""
        return self(x, text)

    def _gate_map(self, x: torch.Tensor, text: torch.Tensor, pool: bool) -> torch.Tensor:
        """``x * g_c * s`` on ``[B, C, H, W]`` (then 2x2 average-pooled if ``pool``), from the gates' factors.

        With ``y = x * g_c``, the spatial logits ``y . w + b`` equal ``x . (g_c * w) + b`` and, ``g_c`` being
        constant over positions, ``avgpool(x * g_c * s) = g_c * avgpool(x * s)``. So the statistics, one GEMV for
        the logits and one product ``x * s`` read the map along its contiguous rows, and the channel scale is
        applied last (after pooling: on a quarter of the positions). Same values as the token path up to rounding.
        """
        b, _, h, w = x.shape
        flat = x.flatten(2)  # [B, C, HW], a view
        channel_scale = None
        if self.channel_gate is not None:
            channel_scale = self.channel_gate.scale(flat.mean(dim=2), flat.amax(dim=2), text).to(x.dtype)
        out = x
        if self.spatial_gate is not None:
            weight, bias = self.spatial_gate.linear.generate(text)  # [B, C, 1], [B, 1, 1]
            weight = weight.to(x.dtype)
            if channel_scale is not None:
                weight = weight * channel_scale[:, :, None]
            logits = torch.baddbmm(bias.to(x.dtype), weight.transpose(1, 2), flat)  # [B, 1, HW]
            out = x * torch.sigmoid(logits).view(b, 1, h, w)
        if pool:
            out = F.avg_pool2d(out, kernel_size=2, stride=2, ceil_mode=True)
        if channel_scale is not None:
            scale = channel_scale[:, :, None, None]
            # In place on a tensor made here (autograd handles mul_); never on the caller's map.
            out = x * scale if out is x else out.mul_(scale)
        return out
