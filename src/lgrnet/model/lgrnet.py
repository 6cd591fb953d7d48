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
from lgrnet.model.head import PredictionHead, projection
from lgrnet.model.losses import LGRNetCriterion
from lgrnet.model.reasoning import ReasoningStack
from lgrnet.model.text import TextExtractor
from lgrnet.model.tfe import TextualFeatureExtender, sine_embedding
from lgrnet.model.visual import VisualExtractor


@dataclass
class LGRNetOutput:
    """What :meth:`LGRNet.forward` returns."""

    pred_boxes: torch.Tensor  # [B, 4] (cx, cy, w, h) / S on the padded canvas, last layer
    layer_boxes: torch.Tensor  # [N, B, 4] every reasoning layer (last = pred_boxes)
    coord: torch.Tensor | None  # [B, 2] (x, y) in [0, 1] from the TFE coordinate head; None if coord_embed="none"
    loss: torch.Tensor | None = None  # total loss when target boxes were given
    loss_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    visual_attention: torch.Tensor | None = None  # [N, B, Nv] prediction token -> visual tokens (TCA)
    text_attention: torch.Tensor | None = None  # [N, B, L] prediction token -> text tokens (TCF)
    token_shapes: list[tuple[int, int]] = field(default_factory=list)  # visual maps, e.g. [(20, 20), (10, 10)]


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
        self.text = TextExtractor(config.text)
        text_dim = self.text.hidden_size
        self.visual = VisualExtractor(config.visual, text_dim=text_dim, image_size=config.image_size)
        self.visual_proj = projection(self.visual.out_channels, d, config.proj_layers)
        self.tfe = TextualFeatureExtender(text_dim, d, config.proj_layers, coordinate=config.coord_embed != "none",
                                          sentence=loss.align)
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
        self.criterion = LGRNetCriterion(loss, d)
        if config.init == "xavier":
            self._xavier_init()

    def _xavier_init(self) -> None:
        """Paper: Xavier init of the fusion part (every Linear/attention matrix; position tables stay N(0, 1))."""
        for name, param in self.named_parameters():
            if name.startswith(("text.", "visual.")) or param.dim() < 2 or "_pos." in name or "pred_token" in name:
                continue
            nn.init.xavier_uniform_(param)

    @property
    def token_shapes(self) -> list[tuple[int, int]]:
        return self.visual.token_shapes

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, target_boxes: torch.Tensor | None = None,
                output_attentions: bool = False) -> LGRNetOutput:
        """images [B,3,S,S], image_mask [B,S,S] bool (True = pad), input_ids/attention_mask [B,L] (1 = real),
        target_boxes [B,4] (cx,cy,w,h)/S or None."""
        text = self.text(input_ids, attention_mask)
        vis_tokens, vis_mask = self.visual(images, image_mask.bool(), text.cls)

        memory = self.tfe.word_embeddings(text.tokens)  # [B, L, D]
        coord = coord_emb = None
        if self.tfe.coordinate_head is not None:
            coord = self.tfe.coordinate(memory[:, 0])  # projected [CLS] -> (x, y)
            coord_emb = self.tfe.coordinate_embedding(coord)

        b, num_text = input_ids.shape
        p = self.config.num_pred_tokens
        if num_text > self.text_pos.num_embeddings:
            raise LGRNetError(f"text length {num_text} exceeds model.text.max_length={self.text_pos.num_embeddings}")
        if vis_tokens.shape[1] + p != self.visual_pos.num_embeddings:
            raise LGRNetError(f"image size {images.shape[-1]} gives {vis_tokens.shape[1]} visual tokens; the model "
                              f"was built for model.image_size={self.config.image_size}")
        x_vis = self.visual_proj(vis_tokens)
        if self.config.visual_pos_input:
            x_vis = x_vis + self.visual_pos.weight[p:].to(x_vis.dtype)
        if self.pred_token is None:
            pred = x_vis.new_zeros(b, p, x_vis.shape[-1])
        else:
            pred = self.pred_token.weight[None].expand(b, -1, -1).to(x_vis.dtype)
        x = torch.cat((pred, x_vis), dim=1)
        mask = torch.cat((vis_mask.new_zeros(b, p), vis_mask), dim=1)

        states, vis_attn, txt_attn = self.reasoning(
            x, mask, memory, text.pad_mask, self.visual_pos.weight, self.text_pos.weight[:num_text], coord_emb,
            output_attentions=output_attentions,
        )
        layer_boxes = self.head(states)
        out = LGRNetOutput(pred_boxes=layer_boxes[-1], layer_boxes=layer_boxes, coord=coord,
                           visual_attention=vis_attn, text_attention=txt_attn, token_shapes=self.token_shapes)
        if target_boxes is not None:
            sentence = self.tfe.sentence_embedding(text.cls) if self.loss_config.align else None
            out.loss_dict = self.criterion(layer_boxes, target_boxes, states, sentence)
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


def grid_sine_embedding(shapes: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """[sum h*w, dim]: the sine embedding of every cell centre ((j + 0.5) / w, (i + 0.5) / h) of each map,
    row-major, maps in order (the layout of the visual tokens)."""
    rows = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        rows.append(sine_embedding(torch.stack((xs, ys), dim=-1).reshape(-1, 2), dim))
    return torch.cat(rows)


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
