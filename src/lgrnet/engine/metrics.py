"""Referring-expression metrics (spec section 12): Acc@0.5, Acc@0.75, mean IoU, and Acc@0.5 split into spatial and
non-spatial expressions (paper Table II), on the padded canvas as the reference computes them and in original pixels.

Reference rule: the predicted (cx, cy, w, h) box is converted to corners and clamped to [0, 1]; the ground truth
is not clamped; IoU = inter / (union + 1e-16), so two degenerate (zero-area) boxes score 0; a hit iff IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_convert

from lgrnet.engine.distributed import DistInfo, all_reduce_sum

EPS = 1e-16


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]`` (both [N, 4] x1y1x2y2), the reference's formula (+1e-16)."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    return inter / (area1 + area2 - inter + EPS)


def canvas_iou(pred_cxcywh: torch.Tensor, gt_cxcywh: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU on the normalised canvas: prediction clamped to [0, 1], ground truth as is (spec 12)."""
    pred = box_convert(pred_cxcywh.float(), "cxcywh", "xyxy").clamp(0.0, 1.0)
    gt = box_convert(gt_cxcywh.float(), "cxcywh", "xyxy")
    return paired_iou(pred, gt)


def clamp_to_images(boxes_xyxy: torch.Tensor, sizes_wh: torch.Tensor) -> torch.Tensor:
    """Clamp original-pixel boxes to their images ([N, 2] sizes as (w, h))."""
    upper = torch.cat([sizes_wh, sizes_wh], dim=1).to(boxes_xyxy)
    return torch.minimum(boxes_xyxy.clamp(min=0.0), upper)


# Order of the running sums; a single float64 tensor so one all_reduce covers all of them.
_FIELDS = (
    "count", "spatial_count", "non_spatial_count",
    "hit50", "hit75", "iou", "spatial_hit50", "non_spatial_hit50",
    "orig_hit50", "orig_hit75", "orig_iou", "orig_spatial_hit50", "orig_non_spatial_hit50",
)


class MetricAccumulator:
    """Running sums of hits and IoUs; :meth:`compute` reduces them over ranks and returns percentages."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64)

    def _add(self, name: str, value: torch.Tensor | float) -> None:
        self.sums[_FIELDS.index(name)] += float(value)

    def update(self, iou_canvas: torch.Tensor, iou_original: torch.Tensor | None,
               spatial: Sequence[bool]) -> None:
        """Add a batch of per-sample IoUs (canvas, and original pixels when known) and spatial flags."""
        iou_canvas = iou_canvas.detach().double().cpu()
        sp = torch.tensor(list(spatial), dtype=torch.bool)
        self._add("count", iou_canvas.numel())
        self._add("spatial_count", sp.sum())
        self._add("non_spatial_count", (~sp).sum())
        for prefix, iou in (("", iou_canvas), ("orig_", iou_original)):
            if iou is None:
                continue
            iou = iou.detach().double().cpu()
            hit = iou >= 0.5
            self._add(f"{prefix}hit50", hit.sum())
            self._add(f"{prefix}hit75", (iou >= 0.75).sum())
            self._add(f"{prefix}iou", iou.sum())
            self._add(f"{prefix}spatial_hit50", (hit & sp).sum())
            self._add(f"{prefix}non_spatial_hit50", (hit & ~sp).sum())

    def compute(self, info: DistInfo | None = None) -> dict[str, float | None]:
        """Metrics in percent (mIoU in percent too), summed over ranks first; never NaN. The spatial and
        non-spatial accuracies of a group without samples are None (no figure, rather than a false 0%); the
        overall figures of an empty set are 0 with ``count`` 0."""
        sums = all_reduce_sum(self.sums, info) if info is not None else self.sums
        s = dict(zip(_FIELDS, sums.tolist()))

        def pct(num: float, den: float) -> float:
            return 100.0 * num / den if den > 0 else 0.0

        def group_pct(num: float, den: float) -> float | None:
            return 100.0 * num / den if den > 0 else None

        n = s["count"]
        return {
            "acc50": pct(s["hit50"], n),
            "acc75": pct(s["hit75"], n),
            "miou": pct(s["iou"], n),
            "acc50_spatial": group_pct(s["spatial_hit50"], s["spatial_count"]),
            "acc50_non_spatial": group_pct(s["non_spatial_hit50"], s["non_spatial_count"]),
            "orig_acc50": pct(s["orig_hit50"], n),
            "orig_acc75": pct(s["orig_hit75"], n),
            "orig_miou": pct(s["orig_iou"], n),
            "orig_acc50_spatial": group_pct(s["orig_spatial_hit50"], s["spatial_count"]),
            "orig_acc50_non_spatial": group_pct(s["orig_non_spatial_hit50"], s["non_spatial_count"]),
            "count": int(n),
            "spatial_count": int(s["spatial_count"]),
            "non_spatial_count": int(s["non_spatial_count"]),
        }
