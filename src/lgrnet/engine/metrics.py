"""Referring-expression metrics (spec section 12): Acc@0.5, Acc@0.75, mean IoU, and Acc@0.5 split into spatial and
non-spatial expressions (paper Table II), on the padded canvas as the reference computes them and in original pixels;
and the generalized REC metrics of models with the GREC head (Precision@(F1=1, IoU>=0.5), N-acc, T-acc) with their
score-threshold sweep.

Reference rule: the predicted (cx, cy, w, h) box is converted to corners and clamped to [0, 1]; the ground truth
is not clamped; IoU = inter / (union + 1e-16), so two degenerate (zero-area) boxes score 0; a hit iff IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_convert, box_iou

from lgrnet.data.records import target_kind
from lgrnet.engine.distributed import DistInfo, all_reduce_sum
from lgrnet.model.grec import suppress_duplicates

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


# ----------------------------------------------------------------------------------------------------------------
# Generalized REC (gRefCOCO's definitions): zero, one or many target boxes, zero, one or many predicted boxes.
# Boxes here are (x1, y1, x2, y2) in original-image pixels; a prediction is a token whose score >= the threshold.

#: The IoU at which a prediction may match a target (inclusive: IoU exactly 0.5 matches).
GREC_IOU = 0.5
#: The score thresholds ``lgrnet eval --sweep`` tries: 0.05, 0.10, ..., 0.95.
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True)
class GrecOutcome:
    """One sample's one-to-one matching of predictions to targets at IoU >= 0.5: matched pairs are true
    positives, unmatched predictions false positives, unmatched targets false negatives."""

    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); a no-target sample without predictions (0 / 0) is a perfect 1."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    @property
    def correct(self) -> bool:
        """F1 = 1: every target found once and nothing else predicted (a no-target sample: no prediction)."""
        return self.fp == 0 and self.fn == 0


def _as_boxes(boxes: torch.Tensor | Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def _matched(allowed: torch.Tensor) -> int:
    """The size of a maximum one-to-one matching in the boolean [P, T] matrix of allowed pairs."""
    from scipy.optimize import linear_sum_assignment

    if allowed.numel() == 0 or not bool(allowed.any()):
        return 0
    if min(allowed.shape) == 1:  # one prediction or one target: a single pair at most
        return 1
    weights = allowed.double().numpy()
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return int(weights[rows, cols].sum())


def grec_match(predictions: torch.Tensor | Sequence[Sequence[float]],
               targets: torch.Tensor | Sequence[Sequence[float]], iou_threshold: float = GREC_IOU) -> GrecOutcome:
    """The outcome of ``predictions`` [P, 4] against ``targets`` [T, 4]: a maximum one-to-one matching of the
    pairs with IoU >= ``iou_threshold`` (so that a target covered by two predictions counts one true positive and
    one false positive, and no greedy order can lose a match)."""
    predictions, targets = _as_boxes(predictions), _as_boxes(targets)
    tp = _matched(box_iou(predictions, targets) >= iou_threshold)  # NaN (two zero-area boxes) is no match
    return GrecOutcome(tp=tp, fp=len(predictions) - tp, fn=len(targets) - tp)


@dataclass(frozen=True)
class GrecSample:
    """What GREC evaluation needs of one sample: every token's box [K, 4] and score [K] (a probability), the
    target set [T, 4] (possibly empty), and the top box [4] that classic Acc@0.5 is measured on (default: the box of
    the highest-scoring token). Boxes in one coordinate system (original-image pixels, x1y1x2y2)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    top_box: torch.Tensor | None = None

    def top(self) -> torch.Tensor:
        if self.top_box is not None:
            return _as_boxes(self.top_box)
        return _as_boxes(self.boxes)[torch.as_tensor(self.scores).reshape(-1).argmax()].reshape(1, 4)


# Per-threshold running counts; one float64 tensor [thresholds, fields] so one all_reduce covers all of them.
_GREC_FIELDS = (
    "count", "correct", "f1",
    "single_count", "single_correct", "multi_count", "multi_correct", "none_count", "none_correct",
    "target_count", "target_found", "single_top_hit50",
)
_GREC_COLUMN = {name: i for i, name in enumerate(_GREC_FIELDS)}


class GrecAccumulator:
    """GREC counts of samples at several score thresholds at once (the sweep and the model's own threshold);
    :meth:`compute` reduces them over ranks. With ``nms_iou``, the boxes a threshold keeps go through the same
    duplicate suppression as inference (``model.grec.nms_iou``)."""

    def __init__(self, thresholds: Sequence[float] = SWEEP_THRESHOLDS, nms_iou: float | None = None) -> None:
        self.nms_iou = nms_iou
        self.thresholds = tuple(sorted({float(t) for t in thresholds}))
        if not self.thresholds:
            raise ValueError("GrecAccumulator needs at least one threshold")
        self.sums = torch.zeros(len(self.thresholds), len(_GREC_FIELDS), dtype=torch.float64)

    def update(self, samples: Sequence[GrecSample]) -> None:
        sums = self.sums.numpy()  # a view: plain indexing is much cheaper than tensor ops, sample by sample
        col = _GREC_COLUMN
        for sample in samples:
            boxes, targets = _as_boxes(sample.boxes), _as_boxes(sample.targets)
            scores = torch.as_tensor(sample.scores).reshape(-1)
            kind = target_kind(len(targets))
            top_hit = kind == "single" and bool(box_iou(sample.top(), targets)[0, 0] >= GREC_IOU)
            allowed = box_iou(boxes, targets) >= GREC_IOU  # every token against every target, once
            # Which tokens each threshold keeps (compared in the scores' dtype, as a tensor >= float compares).
            keeps = (scores[None] >= torch.tensor(self.thresholds, dtype=scores.dtype)[:, None]).tolist()
            outcomes: dict[tuple[bool, ...], GrecOutcome] = {}  # thresholds that keep the same tokens agree
            for row, keep in enumerate(keeps):
                key = tuple(keep)
                if key not in outcomes:
                    kept = torch.tensor(keep, dtype=torch.bool).nonzero().flatten()
                    if self.nms_iou is not None:
                        kept = kept[suppress_duplicates(boxes[kept], scores[kept], self.nms_iou)]
                    tp = _matched(allowed[kept])
                    outcomes[key] = GrecOutcome(tp=tp, fp=len(kept) - tp, fn=len(targets) - tp)
                outcome = outcomes[key]
                sums[row, col["count"]] += 1
                sums[row, col["correct"]] += outcome.correct
                sums[row, col["f1"]] += outcome.f1
                sums[row, col[f"{kind}_count"]] += 1
                sums[row, col[f"{kind}_correct"]] += outcome.correct
                if kind != "none":
                    sums[row, col["target_count"]] += 1
                    sums[row, col["target_found"]] += outcome.tp + outcome.fp > 0
                sums[row, col["single_top_hit50"]] += top_hit

    def compute(self, info: DistInfo | None = None) -> list[dict[str, float | int | None]]:
        """One row per threshold (ascending), see :func:`grec_row`."""
        sums = all_reduce_sum(self.sums, info) if info is not None else self.sums
        return [grec_row(threshold, dict(zip(_GREC_FIELDS, row)))
                for threshold, row in zip(self.thresholds, sums.tolist())]


def grec_row(threshold: float, s: dict[str, float]) -> dict[str, float | int | None]:
    """The GREC figures of counts ``s`` at ``threshold``, in percent: ``precision`` (Precision@(F1=1, IoU>=0.5)
    over all samples), ``n_acc`` (no-target samples without a prediction), ``t_acc`` (target samples with at least
    one prediction), ``single_acc50`` (classic Acc@0.5 of the top box on single-target samples), ``mean_f1``,
    ``precision_single`` / ``precision_multi`` (Precision@(F1=1) of that kind), and the counts. A figure over no
    sample is None; ``correct`` (the count of F1 = 1 samples) orders thresholds exactly."""

    def pct(num: float, den: float) -> float | None:
        return 100.0 * num / den if den > 0 else None

    return {
        "threshold": threshold,
        "precision": pct(s["correct"], s["count"]),
        "n_acc": pct(s["none_correct"], s["none_count"]),
        "t_acc": pct(s["target_found"], s["target_count"]),
        "single_acc50": pct(s["single_top_hit50"], s["single_count"]),
        "mean_f1": pct(s["f1"], s["count"]),
        "precision_single": pct(s["single_correct"], s["single_count"]),
        "precision_multi": pct(s["multi_correct"], s["multi_count"]),
        "correct": int(s["correct"]),
        "count": int(s["count"]),
        "single_count": int(s["single_count"]),
        "multi_count": int(s["multi_count"]),
        "none_count": int(s["none_count"]),
    }


def best_threshold(rows: Sequence[dict[str, Any]], min_n_acc: float | None = None) -> float:
    """The threshold of the row with the most F1 = 1 samples (the highest Precision@(F1=1)); among equals, the one
    closest to 0.5, and of two equally close the higher (fewer boxes claimed).

    ``min_n_acc`` (a percentage) first keeps the rows whose N-acc reaches it, for a user who wants at most that
    share of no-target expressions answered with a box; when no row reaches it, the row with the highest N-acc
    (then the rules above) is chosen (see :func:`meets_min_n_acc`). Rows without an N-acc (no no-target sample)
    leave the constraint unchecked."""
    if not rows:
        raise ValueError("best_threshold needs at least one row")

    def rank(r: dict[str, Any]) -> tuple[float, float, float]:
        return (r["correct"], -round(abs(r["threshold"] - 0.5), 9), r["threshold"])

    candidates = [r for r in rows if meets_min_n_acc(r, min_n_acc)]
    if not candidates:  # none reaches the floor (so every row has an N-acc): the highest N-acc
        top = max(r["n_acc"] for r in rows)
        candidates = [r for r in rows if r["n_acc"] == top]
    return float(max(candidates, key=rank)["threshold"])


def meets_min_n_acc(row: dict[str, Any], min_n_acc: float | None) -> bool:
    """Whether a sweep row's N-acc reaches ``min_n_acc`` (True without a constraint or without an N-acc)."""
    if min_n_acc is None or row.get("n_acc") is None:
        return True
    return row["n_acc"] >= min_n_acc - 1e-9


def grec_sweep(samples: Sequence[GrecSample], thresholds: Sequence[float] = SWEEP_THRESHOLDS,
               nms_iou: float | None = None) -> tuple[list[dict[str, float | int | None]], float]:
    """The GREC figures of ``samples`` at every threshold (ascending) and the chosen one (:func:`best_threshold`),
    found boxes suppressed at ``nms_iou`` as :class:`GrecAccumulator` does."""
    acc = GrecAccumulator(thresholds, nms_iou)
    acc.update(samples)
    rows = acc.compute()
    return rows, best_threshold(rows)
