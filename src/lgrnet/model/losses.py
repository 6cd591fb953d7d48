"""Losses (paper Sec. III-D, Eqs. 10-12; spec section 9).

* Box losses per reasoning layer: L1 on normalised (cx, cy, w, h), summed over the 4 coordinates and averaged over
  the batch, plus GIoU loss (torchvision), averaged over the batch. The last layer always counts; the others too
  with ``aux_loss``.
* Optional coordinate loss (``coord_weight``, beyond the paper): L1 between the TFE coordinate point and the target
  box centre; the reference trains that point by no loss.
* Optional region loss (``region_weight``, beyond the paper): a dense matching signal. Each visual token's score is
  the cosine between the token (after the visual projection, before positions) and the sentence embedding, over
  ``region_temperature``; the loss is minus the log of the softmax mass (over the image's tokens) on the tokens of
  the target box. The box losses reach the choice of object only through the prediction token's attention; this
  trains the text-conditioned visual tokens to single out the referred object directly, which speeds up learning new
  words on a new domain. It adds no parameters.
* Cross-modal alignment loss: InfoNCE between the prediction token's object embedding
  ``L2norm(object_proj(token))`` and the sentence embedding, with a learnable temperature ``exp(logit_scale)``
  (init ``ln(1/0.07)``). Symmetric (reference) or object->sentence only (paper), last layer (reference) or every
  layer (paper, summed), optionally with negatives gathered from every rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from lgrnet.config import LossConfig


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the 4 coordinates, mean over the batch. pred/target [B, 4]."""
    return (pred.float() - target.float()).abs().sum(dim=-1).mean()


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean over the batch of 1 - GIoU between matching (cx, cy, w, h) boxes (the pairwise matrix's diagonal).

    The operations of torchvision's ``generalized_box_iou_loss`` in its order (so the same values and gradients, bit
    for bit), except that the intersection of disjoint boxes is zeroed with ``torch.where`` instead of an assignment
    through a boolean mask, whose data-dependent size makes the host wait for a GPU in every call."""
    px1, py1, px2, py2 = box_convert(pred.float(), "cxcywh", "xyxy").unbind(dim=-1)
    tx1, ty1, tx2, ty2 = box_convert(target.float(), "cxcywh", "xyxy").unbind(dim=-1)
    left, top, right, bottom = torch.max(px1, tx1), torch.max(py1, ty1), torch.min(px2, tx2), torch.min(py2, ty2)
    overlapping = (bottom > top) & (right > left)
    intersection = torch.where(overlapping, (right - left) * (bottom - top), torch.zeros_like(px1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - intersection
    iou = intersection / (union + eps)
    hull = (torch.max(px2, tx2) - torch.min(px1, tx1)) * (torch.max(py2, ty2) - torch.min(py1, ty1))
    loss = 1 - (iou - (hull - union) / (hull + eps))
    return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows (differentiable) and this rank's offset in them; the local tensor when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def alignment_loss(objects: torch.Tensor, sentences: torch.Tensor, logit_scale: torch.Tensor,
                   symmetric: bool = True, gather: bool = False) -> torch.Tensor:
    """InfoNCE between unit-norm object embeddings [B, D] and sentence embeddings [B, D] (sample i matches i).

    ``S = exp(logit_scale) * objects @ sentences^T``; object->sentence cross-entropy, averaged with the
    sentence->object direction when ``symmetric``. With ``gather`` the other ranks' embeddings are extra negatives
    (every rank must have the same batch size).
    """
    objects, sentences = objects.float(), sentences.float()
    scale = logit_scale.float().exp()
    all_sentences, offset = _gather(sentences) if gather else (sentences, 0)
    labels = torch.arange(objects.shape[0], device=objects.device) + offset
    loss = F.cross_entropy(scale * objects @ all_sentences.t(), labels)
    if symmetric:
        all_objects, _ = _gather(objects) if gather else (objects, 0)
        loss = (loss + F.cross_entropy(scale * sentences @ all_objects.t(), labels)) / 2
    return loss


def coord_loss(coord: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 distance (x + y) between each expression's coordinate point [B, 2] and the nearest centre of its targets
    [B, T, 4] (cx, cy, w, h), averaged over the expressions that have a target; 0 when none has."""
    distance = (coord.float()[:, None] - targets[..., :2].float()).abs().sum(dim=-1)  # [B, T]
    distance = distance.masked_fill(~valid, float("inf")).min(dim=1).values
    has_target = valid.any(dim=1)
    if not bool(has_target.any()):
        return coord.float().sum() * 0.0
    return distance[has_target].mean()


def token_centres(token_shapes: list[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """Centres (x, y) in [0, 1] of the flattened visual tokens [Nv, 2]: each map row-major, maps in order."""
    centres = []
    for h, w in token_shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1))
    return torch.cat(centres)


def target_tokens(token_shapes: list[tuple[int, int]], targets: torch.Tensor) -> torch.Tensor:
    """[B, Nv] bool: the tokens whose centre lies in the target box (cx, cy, w, h, normalised), plus on each map the
    token holding the box centre, so that a box smaller than a token still has one."""
    centres = token_centres(token_shapes, targets.device)
    x1, y1, x2, y2 = box_convert(targets.float(), "cxcywh", "xyxy").unbind(-1)
    cx, cy = centres[:, 0], centres[:, 1]
    inside = (cx >= x1[:, None]) & (cx <= x2[:, None]) & (cy >= y1[:, None]) & (cy <= y2[:, None])
    offset = 0
    rows = torch.arange(len(targets), device=targets.device)
    for h, w in token_shapes:
        col = (targets[:, 0].float() * w).floor().long().clamp(0, w - 1)
        row = (targets[:, 1].float() * h).floor().long().clamp(0, h - 1)
        inside[rows, offset + row * w + col] = True
        offset += h * w
    return inside


def region_loss(tokens: torch.Tensor, sentences: torch.Tensor, pad_mask: torch.Tensor,
                token_shapes: list[tuple[int, int]], targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Minus the log softmax mass on the target's tokens. tokens [B, Nv, D], sentences [B, D] (unit norm), pad_mask
    [B, Nv] (True = padding: no candidate, unless it holds part of the target: a token on the image's edge may be
    marked padding), targets [B, 4] (cx, cy, w, h) normalised to the padded canvas."""
    scores = torch.einsum("bnd,bd->bn", F.normalize(tokens.float(), dim=-1), sentences.float()) / temperature
    positive = target_tokens(token_shapes, targets)
    scores = scores.masked_fill(pad_mask & ~positive, float("-inf"))
    log_probs = scores.log_softmax(dim=-1)
    return -log_probs.masked_fill(~positive, float("-inf")).logsumexp(dim=-1).mean()


class LGRNetCriterion(nn.Module):
    """Weighted sum of the box losses of every layer and the alignment loss; owns ``object_proj``/``logit_scale``.

    Loss-dict keys: ``l1``/``giou`` for the last layer, ``l1_{i}``/``giou_{i}`` for the earlier layers
    (``aux_loss``), ``align`` (``align_{i}`` per earlier layer with ``align_all_layers``), ``coord`` (with
    ``coord_weight``), ``region`` (with ``region_weight``), and ``loss`` = total.
    """

    def __init__(self, cfg: LossConfig, hidden_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.align:
            self.object_proj = nn.Linear(hidden_dim, hidden_dim)  # reference `class_proj`
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.align_temperature)))
        else:
            self.object_proj = None
            self.register_parameter("logit_scale", None)

    def object_embeddings(self, states: torch.Tensor) -> torch.Tensor:
        """[..., D] prediction-token states -> unit-norm object embeddings."""
        return F.normalize(self.object_proj(states), dim=-1)

    def forward(self, layer_boxes: torch.Tensor, target_boxes: torch.Tensor, layer_states: torch.Tensor,
                sentence_emb: torch.Tensor | None, coord: torch.Tensor | None = None,
                region: tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]] | None = None,
                ) -> dict[str, torch.Tensor]:
        """layer_boxes [N, B, 4], target_boxes [B, 4], layer_states [N, B, D], sentence_emb [B, D] | None,
        coord [B, 2] | None (the coordinate point, for ``coord_weight``), region (visual tokens [B, Nv, D], their
        padding mask [B, Nv], the maps' shapes) for ``region_weight``."""
        cfg = self.cfg
        n = layer_boxes.shape[0]
        losses: dict[str, torch.Tensor] = {}
        total = layer_boxes.new_zeros((), dtype=torch.float32)
        for i in range(n) if cfg.aux_loss else [n - 1]:
            suffix = "" if i == n - 1 else f"_{i}"
            losses["l1" + suffix] = l1_loss(layer_boxes[i], target_boxes)
            losses["giou" + suffix] = giou_loss(layer_boxes[i], target_boxes)
            total = total + cfg.l1_weight * losses["l1" + suffix] + cfg.giou_weight * losses["giou" + suffix]
        if cfg.align:
            for i in range(n) if cfg.align_all_layers else [n - 1]:
                key = "align" if i == n - 1 else f"align_{i}"
                losses[key] = alignment_loss(self.object_embeddings(layer_states[i]), sentence_emb,
                                             self.logit_scale, cfg.align_symmetric, cfg.align_gather)
                total = total + cfg.align_weight * losses[key]
        if cfg.coord_weight > 0 and coord is not None:
            losses["coord"] = coord_loss(coord, target_boxes[:, None], target_boxes.new_ones(len(target_boxes), 1,
                                                                                              dtype=torch.bool))
            total = total + cfg.coord_weight * losses["coord"]
        if cfg.region_weight > 0 and region is not None:
            tokens, pad_mask, shapes = region
            losses["region"] = region_loss(tokens, sentence_emb, pad_mask, shapes, target_boxes, cfg.region_temperature)
            total = total + cfg.region_weight * losses["region"]
        losses["loss"] = total
        return losses
