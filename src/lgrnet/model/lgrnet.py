"""The assembled LGR-NET (paper Fig. 2) and its typed output.

Left to right: text extractor (``text.``) and text-conditioned visual extractor (``visual.``) -> projections to the
hidden size -> Textual Feature Extender (``tfe.``: word embeddings, coordinate + sine embedding, sentence
embedding) -> N TCA/TCF reasoning layers around the prediction token(s) (``reasoning.``) -> shared prediction head
(``head.``) on every layer -> losses (``criterion.``: box losses, alignment loss with ``object_proj`` and
``logit_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lgrnet.config import LossConfig, ModelConfig
from lgrnet.errors import LGRNetError
from lgrnet.model.grec import GrecCriterion, GrecTokens
from lgrnet.model.head import PredictionHead, projection
from lgrnet.model.losses import LGRNetCriterion, token_centres
from lgrnet.model.reasoning import ReasoningStack
from lgrnet.model.text import TextExtractor
from lgrnet.model.tfe import TextualFeatureExtender, sine_embedding
from lgrnet.model.visual import VisualExtractor


@dataclass
class LGRNetOutput:
    """What :meth:`LGRNet.forward` returns."""

    pred_boxes: torch.Tensor  # [B, 4] (cx, cy, w, h) / S on the padded canvas, last layer (generalized head: the
    # box of the highest-scoring token)
    layer_boxes: torch.Tensor  # [N, B, 4] every reasoning layer (last = pred_boxes)
    coord: torch.Tensor | None  # [B, 2] (x, y) in [0, 1] from the TFE coordinate head; None if coord_embed="none"
    loss: torch.Tensor | None = None  # total loss when target boxes were given
    loss_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    visual_attention: torch.Tensor | None = None  # [N, B, Nv] prediction token -> visual tokens (TCA)
    text_attention: torch.Tensor | None = None  # [N, B, L] prediction token -> text tokens (TCF)
    token_shapes: list[tuple[int, int]] = field(default_factory=list)  # visual maps, e.g. [(20, 20), (10, 10)]
    # Generalized head only (else None): every layer's box and target logit of each of the K tokens.
    token_boxes: torch.Tensor | None = None  # [N, B, K, 4]
    token_logits: torch.Tensor | None = None  # [N, B, K]; probability = sigmoid


class LGRNet(nn.Module):
    """LGR-NET for referring expression comprehension.

    ``loss`` None uses the default :class:`LossConfig` (the alignment-loss modules are part of the model, so the
    state dict does not depend on whether a loss is computed). Losses are computed whenever ``target_boxes`` are
    given, in train or eval mode.
    """

    def __init__(self, config: ModelConfig, loss: LossConfig | None = None) -> None:
        super().__init__()
        loss = loss or LossConfig()
        self.config = config
        self.loss_config = loss
        d, p = config.hidden_dim, config.num_pred_tokens
        if p < 1:
            raise LGRNetError(f"model.num_pred_tokens must be >= 1, got {p}")
        if config.grec.enabled:
            if p != 1:
                raise LGRNetError("model.grec replaces the pooled prediction tokens: keep model.num_pred_tokens 1 "
                                  f"(got {p}) and set model.grec.num_queries")
            if config.grec.num_queries < 1:
                raise LGRNetError(f"model.grec.num_queries must be >= 1, got {config.grec.num_queries}")
            nms_iou = config.grec.nms_iou
            if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
                raise LGRNetError(f"model.grec.nms_iou must be null or a number in (0, 1], got {nms_iou!r}")
            p = config.grec.num_queries
        if loss.region_weight > 0 and config.grec.enabled:
            raise LGRNetError("loss.region_weight is for single-target models: set it to 0 with model.grec.enabled")
        if loss.region_weight > 0 and loss.region_temperature <= 0:
            raise LGRNetError(f"loss.region_temperature must be > 0, got {loss.region_temperature}")
        self.num_tokens = p
        self.text = TextExtractor(config.text)
        text_dim = self.text.hidden_size
        self.visual = VisualExtractor(config.visual, text_dim=text_dim, image_size=config.image_size)
        self.visual_proj = projection(self.visual.out_channels, d, config.proj_layers)
        # The region loss scores the visual tokens against the sentence embedding of the alignment loss.
        self.tfe = TextualFeatureExtender(text_dim, d, config.proj_layers, coordinate=config.coord_embed != "none",
                                          sentence=loss.align or loss.region_weight > 0)
        num_visual = sum(h * w for h, w in self.visual.token_shapes)
        # Learned position tables, N(0, 1) (spec section 4): rows 0..P-1 prediction token(s), then the visual maps.
        self.visual_pos = nn.Embedding(p + num_visual, d)
        if config.visual_pos_init == "sine":
            with torch.no_grad():
                self.visual_pos.weight[p:] = grid_sine_embedding(self.visual.token_shapes, d)
        self.text_pos = nn.Embedding(config.text.max_length, d)
        # Reference: the prediction token is a zero tensor (not a parameter); paper: learnable.
        self.pred_token = nn.Embedding(p, d) if config.pred_token == "learnable" else None
        self.reasoning = ReasoningStack(config)
        self.head = PredictionHead(d)
        if config.grec.enabled:
            self.grec = GrecTokens(config.grec, d)
            self.criterion = GrecCriterion(loss, config.grec, d)
        else:
            self.grec = None
            self.criterion = LGRNetCriterion(loss, d)
        if config.init == "xavier":
            self._xavier_init()

    def _xavier_init(self) -> None:
        """Paper: Xavier init of the fusion part (every Linear/attention matrix; position tables stay N(0, 1))."""
        for name, param in self.named_parameters():
            if (name.startswith(("text.", "visual.", "grec.queries")) or param.dim() < 2 or "_pos." in name
                    or "pred_token" in name):
                continue
            nn.init.xavier_uniform_(param)

    @property
    def token_shapes(self) -> list[tuple[int, int]]:
        return self.visual.token_shapes

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, target_boxes: torch.Tensor | None = None,
                output_attentions: bool = False, target_valid: torch.Tensor | None = None) -> LGRNetOutput:
        """images [B,3,S,S], image_mask [B,S,S] bool (True = pad), input_ids/attention_mask [B,L] (1 = real),
        target_boxes [B,4] (cx,cy,w,h)/S or None; or target sets [B,T,4] with target_valid [B,T] bool (which rows
        are real; a classic model takes them only when every sample has exactly one)."""
        text = self.text(input_ids, attention_mask)
        vis_tokens, vis_mask = self.visual(images, image_mask.bool(), text.cls)

        memory = self.tfe.word_embeddings(text.tokens)  # [B, L, D]
        coord = coord_emb = None
        if self.tfe.coordinate_head is not None:
            coord = self.tfe.coordinate(memory[:, 0])  # projected [CLS] -> (x, y)
            coord_emb = self.tfe.coordinate_embedding(coord)

        b, num_text = input_ids.shape
        p = self.num_tokens
        if num_text > self.text_pos.num_embeddings:
            raise LGRNetError(f"text length {num_text} exceeds model.text.max_length={self.text_pos.num_embeddings}")
        if vis_tokens.shape[1] + p != self.visual_pos.num_embeddings:
            raise LGRNetError(f"image size {images.shape[-1]} gives {vis_tokens.shape[1]} visual tokens; the model "
                              f"was built for model.image_size={self.config.image_size}")
        x_vis = projected = self.visual_proj(vis_tokens)
        if self.config.visual_pos_input:
            x_vis = x_vis + self.visual_pos.weight[p:].to(x_vis.dtype)
        if self.pred_token is None:
            pred = x_vis.new_zeros(b, p, x_vis.shape[-1])
        else:
            pred = self.pred_token.weight[None].expand(b, -1, -1).to(x_vis.dtype)
        if self.grec is not None:  # each token starts from its own identity
            pred = pred + self.grec.queries.weight[None].to(x_vis.dtype)
        x = torch.cat((pred, x_vis), dim=1)
        mask = torch.cat((vis_mask.new_zeros(b, p), vis_mask), dim=1)

        states, vis_attn, txt_attn = self.reasoning(
            x, mask, memory, text.pad_mask, self.visual_pos.weight, self.text_pos.weight[:num_text], coord_emb,
            output_attentions=output_attentions,
        )
        if self.grec is not None:
            return self._generalized_output(states, text.cls, coord, vis_attn, txt_attn, target_boxes, target_valid)
        layer_boxes = self.head(states)
        out = LGRNetOutput(pred_boxes=layer_boxes[-1], layer_boxes=layer_boxes, coord=coord,
                           visual_attention=vis_attn, text_attention=txt_attn, token_shapes=self.token_shapes)
        if target_boxes is not None:
            if target_boxes.dim() == 3:
                target_boxes = single_targets(target_boxes, target_valid)
            region = self.loss_config.region_weight > 0
            sentence = self.tfe.sentence_embedding(text.cls) if self.loss_config.align or region else None
            out.loss_dict = self.criterion(layer_boxes, target_boxes, states, sentence, coord,
                                           (projected, vis_mask, self.token_shapes) if region else None)
            out.loss = out.loss_dict["loss"]
        return out

    def _generalized_output(self, states: torch.Tensor, cls: torch.Tensor, coord: torch.Tensor | None,
                            vis_attn: torch.Tensor | None, txt_attn: torch.Tensor | None,
                            target_boxes: torch.Tensor | None, target_valid: torch.Tensor | None) -> LGRNetOutput:
        """states [N, B, K, D] -> every token's box and logit; the top token's box as the classic outputs."""
        token_boxes = self.head(states)  # [N, B, K, 4]
        token_logits = self.grec.scores(states)  # [N, B, K]
        top = token_logits.argmax(dim=-1)  # [N, B]
        layer_boxes = token_boxes.gather(2, top[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        out = LGRNetOutput(pred_boxes=layer_boxes[-1], layer_boxes=layer_boxes, coord=coord,
                           visual_attention=vis_attn, text_attention=txt_attn, token_shapes=self.token_shapes,
                           token_boxes=token_boxes, token_logits=token_logits)
        if target_boxes is not None:
            if target_boxes.dim() == 2:  # one target per sample
                target_boxes = target_boxes[:, None]
                target_valid = torch.ones(target_boxes.shape[:2], dtype=torch.bool, device=target_boxes.device)
            elif target_valid is None:
                raise LGRNetError("target sets [B, T, 4] need target_valid [B, T]")
            sentence = self.tfe.sentence_embedding(cls) if self.loss_config.align else None
            out.loss_dict = self.criterion.forward_sets(token_boxes, token_logits, target_boxes, target_valid,
                                                        states, sentence, coord)
            out.loss = out.loss_dict["loss"]
        return out

    @staticmethod
    def param_group(name: str) -> str:
        """Optimiser group of a parameter name (spec section 10): text | visual | neck_lateral | qda | rest."""
        if name.startswith("module."):  # DDP / compiled wrappers
            name = name[len("module."):]
        name = name.removeprefix("_orig_mod.")
        if name.startswith("text."):
            return "text"
        if name.startswith("visual."):
            if "qda" in name:
                return "qda"
            if name.startswith("visual.neck.laterals."):
                return "neck_lateral"
            return "visual"
        return "rest"


def single_targets(target_boxes: torch.Tensor, target_valid: torch.Tensor | None) -> torch.Tensor:
    """Target sets [B, T, 4] -> [B, 4] for a classic model, which needs exactly one target per sample."""
    if target_valid is not None and not bool((target_valid.sum(dim=1) == 1).all() and target_valid[:, 0].all()):
        raise LGRNetError("this model predicts exactly one box, but the data has expressions with no target or "
                          "several; train with model.grec.enabled=true (the generalized head) or classic data")
    return target_boxes[:, 0]


def grid_sine_embedding(shapes: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """[sum h*w, dim]: the sine embedding of every cell centre ((j + 0.5) / w, (i + 0.5) / h) of each map,
    row-major, maps in order (the layout of the visual tokens)."""
    return sine_embedding(token_centres(shapes), dim)


#: Parts of the model for parameter summaries: (label, parameter-name prefixes).
MODEL_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("text encoder", ("text.",)),
    ("visual backbone", ("visual.backbone.",)),
    ("backbone QDA", ("visual.stage_qda.",)),
    ("neck laterals", ("visual.neck.laterals.",)),
    ("neck QDA (soft down-sampling)", ("visual.neck.down_qda.",)),
    ("projections to D (text, visual)", ("tfe.text_proj.", "visual_proj.")),
    ("position tables, prediction token", ("visual_pos.", "text_pos.", "pred_token.")),
    ("TFE coordinate head", ("tfe.coordinate_head.",)),
    ("TCA/TCF layers", ("reasoning.layers.",)),
    ("shared final LayerNorm", ("reasoning.norm.",)),
    ("prediction head", ("head.",)),
    ("generalized head (token identities, scores)", ("grec.",)),
    ("alignment (sentence/object proj., logit scale)", ("tfe.sentence_proj.", "criterion.")),
]


def parameter_summary(model: nn.Module) -> list[tuple[str, int, int]]:
    """(part, parameters, trainable parameters) per :data:`MODEL_PARTS` entry, plus "other" if anything is left."""
    rows = []
    seen = set()
    params = dict(model.named_parameters())
    for label, prefixes in MODEL_PARTS:
        names = [n for n in params if n.startswith(prefixes)]
        seen.update(names)
        rows.append((label, sum(params[n].numel() for n in names),
                     sum(params[n].numel() for n in names if params[n].requires_grad)))
    rest = [n for n in params if n not in seen]
    if rest:
        rows.append(("other", sum(params[n].numel() for n in rest),
                     sum(params[n].numel() for n in rest if params[n].requires_grad)))
    return rows
