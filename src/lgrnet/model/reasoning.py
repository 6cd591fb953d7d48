"""Text-guided reasoning: the stacked TCA/TCF layers (paper Sec. III-C, Eqs. 5-8; spec sections 6 and 7).

Each layer updates the sequence ``X = [prediction token(s); visual tokens]`` (batch-first, [B, P + Nv, D]):

1. TCA, Text-guided Context Attention (Eq. 5-6): multi-head self-attention over X. Queries and keys get the
   coordinate embedding on the prediction token(s) (reference, ``coord_embed="qk"``) and the learned visual
   position table on the visual tokens; values carry no position. Padded visual tokens are masked as keys.
2. TCF, Text-guided Cross-modal Fusion (Eq. 7): cross-attention from X to the projected text,
   ``Q = X + Pv`` (full table, incl. the prediction rows), ``K = M + Pt``, ``V = M``. The reference has no q/k/v
   input projections (projection-free multi-head attention + output Linear); ``cross_attn_projections`` adds them
   (paper). ``text_attends_image`` swaps the roles (paper Table XI): the text memory first attends to X and is
   updated, then TCA attends over [X; updated text], so the prediction token still reads the text.
3. FFN (Eq. 8). Every sub-layer is post-norm (residual, dropout, LayerNorm).

The per-layer outputs for the heads go through one LayerNorm shared by all layers; only the prediction token rows
(mean over P tokens) are returned, so the last layer computes only those rows (queries, residuals, norms, FFN; keys
and values are the whole sequence): same outputs for less work. Attention uses ``scaled_dot_product_attention``;
head-averaged weights of the prediction token are computed by an explicit softmax only when asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgrnet.config import ModelConfig


class Attention(nn.Module):
    """Multi-head attention through SDPA.

    With ``in_proj`` it has torch ``nn.MultiheadAttention``'s layout and init (``in_proj_weight`` [3D, D]
    Xavier-uniform, ``in_proj_bias`` zeros); without it the heads are slices of the raw inputs (the reference TCF).
    ``out_proj`` is a Linear with zero bias in both cases.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, in_proj: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        if in_proj:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            self.register_parameter("in_proj_weight", None)
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor,
                weight_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [B, Nq, D], key/value [B, Nk, D], key_padding_mask [B, Nk] bool (True = pad).

        Returns the output [B, Nq, D] and, when ``weight_rows`` > 0, the head-averaged attention weights of the
        first ``weight_rows`` queries [B, weight_rows, Nk] (else None).
        """
        if self.in_proj_weight is not None:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
            query, key, value = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        q, k, v = self._heads(query), self._heads(key), self._heads(value)
        allowed = ~key_padding_mask[:, None, None, :]  # SDPA boolean mask: True = may attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, -1))
        weights = None
        if weight_rows > 0:
            logits = (q[:, :, :weight_rows] * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            logits = logits.float().masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            weights = logits.softmax(dim=-1).mean(dim=1)
        return out, weights


class ReasoningLayer(nn.Module):
    """One TCA/TCF layer (post-norm). Parameter names follow the reference decoder layer."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, cross_attn_projections: bool = False,
                 coord_embed: str = "qk", text_attends_image: bool = False) -> None:
        super().__init__()
        self.coord_embed = coord_embed
        self.text_attends_image = text_attends_image
        self.self_attn = Attention(dim, num_heads, dropout, in_proj=True)
        self.cross_attn = Attention(dim, num_heads, dropout, in_proj=cross_attn_projections)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.ffn_dropout = nn.Dropout(dropout)
        # Paper Table VII "concat": [token; coordinate embedding] projected back to D before the layer.
        self.coord_proj = nn.Linear(2 * dim, dim) if coord_embed == "concat" else None

    def forward(self, x: torch.Tensor, vis_mask: torch.Tensor, memory: torch.Tensor, text_mask: torch.Tensor,
                sa_pos: torch.Tensor, visual_pos: torch.Tensor, text_pos: torch.Tensor,
                coord_emb: torch.Tensor | None, num_pred: int, output_attentions: bool = False,
                pred_only: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x [B, P+Nv, D]; vis_mask [B, P+Nv]; memory [B, L, D]; text_mask [B, L]; sa_pos [B|1, P+Nv, D]
        (TCA q/k positions: coordinate embedding or zeros on the prediction rows, visual table elsewhere);
        visual_pos [1, P+Nv, D] full table; text_pos [1, L, D]; coord_emb [B, D] or None.

        ``pred_only`` (the last layer, whose visual rows nobody reads) updates only the P prediction rows: the
        TCA/TCF queries, residuals, norms and FFN run on rows 0..P-1 while keys and values stay the whole
        sequence, so those rows and the attention weights are the same as with the full computation.

        Returns (x [B, P+Nv, D], or [B, P, D] with ``pred_only``; memory; prediction-token TCA weights
        [B, P, P+Nv] | None; TCF weights | None).
        """
        p = num_pred
        n = x.shape[1]
        if self.coord_embed == "add":  # paper Eq. 4: the embedding enters the prediction token itself
            x = torch.cat((x[:, :p] + coord_emb[:, None], x[:, p:]), dim=1)
        elif self.coord_embed == "concat":
            coord = coord_emb[:, None].expand(-1, p, -1)
            x = torch.cat((self.coord_proj(torch.cat((x[:, :p], coord), dim=-1)), x[:, p:]), dim=1)

        if self.text_attends_image:
            # Table XI swap: the text queries the visual sequence first (the text memory is updated), then TCA
            # lets the prediction/visual tokens read that image-aware text next to the visual tokens.
            ca, _ = self.cross_attn(memory + text_pos, x + visual_pos, x, vis_mask)
            memory = self.norm2(memory + self.dropout2(ca))
            qk = x + sa_pos
            keys = torch.cat((qk, memory + text_pos), dim=1)
            values = torch.cat((x, memory), dim=1)
            if pred_only:
                x, qk = x[:, :p], qk[:, :p]
            sa, sa_w = self.self_attn(qk, keys, values, torch.cat((vis_mask, text_mask), dim=1),
                                      weight_rows=p if output_attentions else 0)
            x = self.norm1(x + self.dropout1(sa))
            ca_w = sa_w[:, :, n:] if sa_w is not None else None
            sa_w = sa_w[:, :, :n] if sa_w is not None else None
        else:
            qk = query = x + sa_pos
            values = x
            if pred_only:
                query, x, visual_pos = qk[:, :p], x[:, :p], visual_pos[:, :p]
            sa, sa_w = self.self_attn(query, qk, values, vis_mask, weight_rows=p if output_attentions else 0)
            x = self.norm1(x + self.dropout1(sa))
            ca, ca_w = self.cross_attn(x + visual_pos, memory + text_pos, memory, text_mask,
                                       weight_rows=p if output_attentions else 0)
            x = self.norm2(x + self.dropout2(ca))

        x = self.norm3(x + self.dropout3(self.linear2(self.ffn_dropout(torch.relu(self.linear1(x))))))
        return x, memory, sa_w, ca_w


class ReasoningStack(nn.Module):
    """N reasoning layers and the shared final LayerNorm (spec section 6.4)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # The generalized head keeps its K tokens apart; the classic model pools its P tokens into one state.
        self.pool = not cfg.grec.enabled
        self.num_pred = cfg.grec.num_queries if cfg.grec.enabled else cfg.num_pred_tokens
        self.coord_embed = cfg.coord_embed
        self.text_attends_image = cfg.text_attends_image
        self.layers = nn.ModuleList(
            ReasoningLayer(cfg.hidden_dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.cross_attn_projections,
                           cfg.coord_embed, cfg.text_attends_image)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)

    def forward(self, x: torch.Tensor, vis_mask: torch.Tensor, memory: torch.Tensor, text_mask: torch.Tensor,
                visual_pos: torch.Tensor, text_pos: torch.Tensor, coord_emb: torch.Tensor | None,
                output_attentions: bool = False, last_layer_pred_only: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x [B, P+Nv, D] (prediction token(s) first), visual_pos [P+Nv, D], text_pos [L, D], coord_emb [B, D].
        ``last_layer_pred_only=False`` runs the last layer on the whole sequence too (same outputs, more work:
        the direct formulation, for checks and A/B timings).

        Returns the normalised, P-mean-pooled prediction token of every layer [N, B, D] (generalized head: every
        token [N, B, K, D], and the attention weights below are the mean over the K tokens), and when
        ``output_attentions`` the prediction token's head-averaged attention to the visual tokens [N, B, Nv] and
        to the text [N, B, L] (with ``text_attends_image`` the text columns of its TCA attention).
        """
        p = self.num_pred
        b, _, d = x.shape
        vis_rows = visual_pos[None, p:].expand(b, -1, -1)
        # Reference ("qk"): p_coord replaces the position of the prediction rows in TCA; otherwise no position.
        pred_rows = coord_emb[:, None].expand(-1, p, -1) if self.coord_embed == "qk" else x.new_zeros(b, p, d)
        sa_pos = torch.cat((pred_rows.to(vis_rows.dtype), vis_rows), dim=1)
        visual_pos, text_pos = visual_pos[None], text_pos[None]

        states, vis_attn, txt_attn = [], [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # Only the prediction rows of the last layer are read (below), so it computes only those rows.
            x, memory, sa_w, ca_w = layer(x, vis_mask, memory, text_mask, sa_pos, visual_pos, text_pos, coord_emb,
                                          p, output_attentions, pred_only=last_layer_pred_only and i == last)
            states.append(self.norm(x[:, :p]).mean(dim=1) if self.pool else self.norm(x[:, :p]))
            if output_attentions:
                vis_attn.append(sa_w[:, :, p:].mean(dim=1))
                txt_attn.append(ca_w.mean(dim=1))
        if not output_attentions:
            return torch.stack(states), None, None
        return torch.stack(states), torch.stack(vis_attn), torch.stack(txt_attn)
