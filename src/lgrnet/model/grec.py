"""Generalized REC head (beyond the paper; ``model.grec.enabled``): zero, one or many boxes with a score each.

The classic model pools its prediction token(s) into one state per layer and predicts one box. With the generalized
head, ``num_queries`` (K) prediction tokens go through the same TCA/TCF layers, each starting from its own learned
identity (``queries``, added to the token) and its own row of the visual position table (TCF query position); the
shared box head gives every token a box, and a linear score head gives it a target logit.

Training matches tokens one-to-one to the target set (Hungarian matching on a DETR-style cost: score, L1 and GIoU;
scipy's ``linear_sum_assignment``) separately for every supervised layer. Matched tokens take the box losses (L1 and
GIoU, normalised by the number of targets, so a batch of single targets gives the classic losses); every token takes
a binary cross-entropy on its score (matched = 1). A no-target expression only teaches the scores (all 0).

How the two other parts of LGR-NET apply to K tokens:

* **Coordinate embedding.** The TFE predicts one coordinate point per expression from the sentence, so it is a
  prior of the expression, not of one object: all K tokens get the same coordinate embedding in their TCA
  queries/keys (the reference's ``qk`` placement), and their identities tell them apart.
* **Alignment loss.** The object embedding of an expression is the normalised mean of its matched tokens'
  embeddings (last layer) and is contrasted with the sentence embeddings of the batch, as in the classic loss;
  no-target expressions have no object and are left out of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, nms

from lgrnet.config import GrecConfig, LossConfig
from lgrnet.model.losses import LGRNetCriterion, alignment_loss, coord_loss, giou_loss


class GrecTokens(nn.Module):
    """The K token identities and the score head (parameters ``grec.queries.weight``, ``grec.score_head.*``)."""

    def __init__(self, config: GrecConfig, hidden_dim: int) -> None:
        super().__init__()
        self.queries = nn.Embedding(config.num_queries, hidden_dim)  # N(0, 1), like the position tables
        self.score_head = nn.Linear(hidden_dim, 1)

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """[..., K, D] token states -> [..., K] target logits."""
        return self.score_head(states).squeeze(-1)


def match(boxes: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
          cfg: GrecConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One-to-one matching of tokens to targets for every layer and sample.

    boxes [N, B, K, 4], logits [N, B, K], targets [B, T, 4] (cx, cy, w, h) / S, valid [B, T] bool.
    Returns for each layer the (sample, token) index pairs of the matches as two long tensors, with the matched
    target index in a third: ``[(batch_idx, token_idx, target_idx)] * N`` (as a tuple of three tensors).
    """
    with torch.no_grad():
        n, b, k, _ = boxes.shape
        t = targets.shape[1]
        pred = boxes.float().flatten(1, 2)  # [N, B*K, 4]
        tgt = targets.float().reshape(-1, 4)  # [B*T, 4]
        l1 = torch.cdist(pred, tgt[None].expand(n, -1, -1), p=1)  # [N, B*K, B*T]
        giou = torch.stack([generalized_box_iou(box_convert(p, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
                            for p in pred])
        prob = logits.float().sigmoid().flatten(1, 2)[..., None]  # [N, B*K, 1]
        cost = cfg.match_l1 * l1 - cfg.match_giou * giou - cfg.match_score * prob
        # Keep each sample's own block [N, B, K, T], then solve on the CPU in one transfer.
        cost = cost.view(n, b, k, b, t).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).cpu()
        counts = valid.sum(dim=1).tolist()
    device = boxes.device
    matches = []
    for layer in range(n):
        rows_b, rows_k, rows_t = [], [], []
        for i, count in enumerate(counts):
            if count == 0:
                continue
            columns = valid[i].nonzero().flatten().tolist() if count < t else list(range(t))
            tokens, picked = linear_sum_assignment(cost[layer, i][:, columns].numpy())
            rows_b += [i] * len(tokens)
            rows_k += tokens.tolist()
            rows_t += [columns[j] for j in picked]
        matches.append(tuple(torch.tensor(r, dtype=torch.long, device=device) for r in (rows_b, rows_k, rows_t)))
    return matches


class GrecCriterion(LGRNetCriterion):
    """Losses of the generalized head; the same alignment modules (``object_proj``, ``logit_scale``) as the classic
    criterion, so the state dict has the same loss parameters.

    Loss-dict keys: ``l1``/``giou``/``score`` for the last layer, ``l1_{i}``/``giou_{i}``/``score_{i}`` for the
    earlier layers (``aux_loss``), ``align``, ``coord`` (with ``coord_weight``) and ``loss`` = total.
    """

    def __init__(self, cfg: LossConfig, grec: GrecConfig, hidden_dim: int) -> None:
        super().__init__(cfg, hidden_dim)
        self.grec = grec

    def forward_sets(self, token_boxes: torch.Tensor, token_logits: torch.Tensor, targets: torch.Tensor,
                     valid: torch.Tensor, token_states: torch.Tensor, sentence_emb: torch.Tensor | None,
                     coord: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """token_boxes [N, B, K, 4], token_logits [N, B, K], targets [B, T, 4], valid [B, T] bool, token_states
        [N, B, K, D], sentence_emb [B, D] | None, coord [B, 2] | None."""
        cfg, grec = self.cfg, self.grec
        n = token_boxes.shape[0]
        layers = list(range(n)) if cfg.aux_loss else [n - 1]
        matches = match(token_boxes[layers], token_logits[layers], targets, valid, grec)
        num_targets = max(int(valid.sum()), 1)
        losses: dict[str, torch.Tensor] = {}
        total = token_boxes.new_zeros((), dtype=torch.float32)
        for layer, (bi, ki, ti) in zip(layers, matches):
            suffix = "" if layer == n - 1 else f"_{layer}"
            pred, tgt = token_boxes[layer][bi, ki], targets[bi, ti]
            # Sums over matches / number of targets: the classic per-sample means when every sample has one target.
            losses["l1" + suffix] = (pred.float() - tgt.float()).abs().sum() / num_targets
            losses["giou" + suffix] = giou_loss(pred, tgt) * (len(bi) / num_targets)
            labels = torch.zeros_like(token_logits[layer], dtype=torch.float32)
            labels[bi, ki] = 1.0
            losses["score" + suffix] = F.binary_cross_entropy_with_logits(token_logits[layer].float(), labels)
            total = (total + cfg.l1_weight * losses["l1" + suffix] + cfg.giou_weight * losses["giou" + suffix]
                     + grec.score_weight * losses["score" + suffix])
        if cfg.align:
            bi, ki, _ = matches[-1]
            has_target = valid.any(dim=1)
            if int(has_target.sum()) > 0:
                # Mean of each sample's matched token embeddings -> one object embedding per sample with targets.
                objects = token_states.new_zeros(token_states.shape[1], token_states.shape[-1], dtype=torch.float32)
                objects = objects.index_add(0, bi, self.object_embeddings(token_states[-1][bi, ki]).float())
                objects = F.normalize(objects[has_target], dim=-1)
                losses["align"] = alignment_loss(objects, sentence_emb[has_target], self.logit_scale,
                                                 cfg.align_symmetric, cfg.align_gather)
            else:
                losses["align"] = self.logit_scale.float() * 0.0
            total = total + cfg.align_weight * losses["align"]
        if cfg.coord_weight > 0 and coord is not None:
            losses["coord"] = coord_loss(coord, targets, valid)
            total = total + cfg.coord_weight * losses["coord"]
        losses["loss"] = total
        return losses


def select_boxes(boxes: torch.Tensor, logits: torch.Tensor, threshold: float, nms_iou: float | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample, the boxes whose score sigmoid(logit) >= ``threshold``, sorted by score (highest first); with
    ``nms_iou``, duplicates are then dropped (:func:`suppress_duplicates`, boxes in x1y1x2y2).

    boxes [B, K, 4] (any box format without ``nms_iou``), logits [B, K]. Returns ``[(boxes [n, 4], scores [n])] * B``.
    """
    scores = logits.float().sigmoid()
    out = []
    for sample_boxes, sample_scores in zip(boxes, scores):
        order = sample_scores.argsort(descending=True)
        keep = order[sample_scores[order] >= threshold]
        if nms_iou is not None:
            keep = keep[suppress_duplicates(sample_boxes[keep], sample_scores[keep], nms_iou)]
        out.append((sample_boxes[keep], sample_scores[keep]))
    return out


def suppress_duplicates(boxes: torch.Tensor, scores: torch.Tensor, nms_iou: float) -> torch.Tensor:
    """Non-maximum suppression: the indices of ``boxes`` [n, 4] (x1y1x2y2) kept when, from the highest score down,
    a box whose IoU with a kept one is above ``nms_iou`` is dropped; in ascending order, so that boxes already sorted
    by score keep their order (ties included)."""
    if len(boxes) < 2:
        return torch.arange(len(boxes))
    return nms(boxes.float(), scores.float(), nms_iou).sort().values
