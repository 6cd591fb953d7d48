"""Reference-order shifted-window attention for timm's Swin blocks (spec 3.1 and the issue's Swin note).

timm's ``SwinTransformerBlock`` rolls the map (cyclic shift) and then pads it to a multiple of the window; the
Swin code LGR-NET builds on (Swin-Object-Detection / mmdet) pads first (right/bottom zeros after ``norm1``), then
rolls, and masks with the usual -100 region mask computed on the *padded* size. At 640 px the stage maps (160, 80,
40, 20) are not multiples of 7, so the two orders differ near the borders. It also always uses the full window
(padding a map smaller than the window instead of shrinking the window).

:func:`use_reference_window_order` swaps the class of every block of a timm Swin for :class:`ReferenceOrderBlock`,
which only re-implements ``_attn``; weights, buffers and parameter names stay timm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn


def region_attention_mask(height: int, width: int, window: int, shift: int,
                          device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The shifted-window region mask on an (already padded) ``height x width`` map: [nW, w*w, w*w], 0 / -100."""
    img = torch.zeros(1, height, width, 1, device=device, dtype=dtype)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in slices:
        for ws in slices:
            img[:, hs, ws, :] = label
            label += 1
    windows = window_partition(img, (window, window)).view(-1, window * window)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class ReferenceOrderBlock(SwinTransformerBlock):
    """A timm Swin block whose window attention pads before the cyclic shift (reference order)."""

    #: Full window and shift used regardless of the feature-map size (set by :func:`use_reference_window_order`).
    ref_window: int
    ref_shift: int

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        window, shift = self.ref_window, self.ref_shift
        pad_b = (window - height % window) % window
        pad_r = (window - width % window) % window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, hp, wp, _ = x.shape
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = region_attention_mask(hp, wp, window, shift, device=x.device, dtype=x.dtype)
        windows = window_partition(x, (window, window)).view(-1, window * window, channels)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, window, window, channels), (window, window), hp, wp)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


def use_reference_window_order(swin: nn.Module, window: int) -> int:
    """Switch every ``SwinTransformerBlock`` in ``swin`` to :class:`ReferenceOrderBlock`; returns how many.

    Odd blocks of each stage (index 1, 3, ...) shift by ``window // 2``, as in the reference. The model must be
    built with ``always_partition=True`` so each attention module keeps the full ``window`` (its relative-position
    table then has ``(2 window - 1)^2`` rows, as in the pretrained checkpoints).
    """
    count = 0
    for stage in swin.layers:
        for index, block in enumerate(stage.blocks):
            if not isinstance(block, SwinTransformerBlock):
                raise TypeError(f"expected a timm SwinTransformerBlock, got {type(block).__name__}")
            if tuple(block.attn.window_size) != (window, window):
                raise ValueError(f"block window {block.attn.window_size} != {window}: build with always_partition")
            block.__class__ = ReferenceOrderBlock
            block.ref_window = window
            block.ref_shift = window // 2 if index % 2 == 1 else 0
            count += 1
    return count
