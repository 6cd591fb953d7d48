"""Textual Feature Extender (paper Sec. III-B, Eqs. 2-4; spec sections 4 and 5).

From the text extractor's output the TFE derives the three textual inputs of the reasoning layers:

* word embeddings: the projected token features, the fixed key/value memory of every TCF cross-attention;
* a 2-D coordinate: ``sigmoid(MLP(projected [CLS]))`` (x, y) in [0, 1], embedded with a 2-D sine embedding that is
  given to the prediction token (spec section 4, Eq. 3-4);
* a sentence embedding: ``L2norm(Linear(raw [CLS]))`` for the cross-modal alignment loss (Eq. 11).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lgrnet.model.head import MLP, projection


def sine_embedding(coord: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine embedding of normalised (x, y) points, spec section 4.

    ``coord`` [..., 2] with channel 0 = x and channel 1 = y. Each axis gets ``dim / 2`` channels: for k < dim / 4,
    ``w_k = 2*pi / temperature^(2k / (dim/2))``, channel 2k = sin(c * w_k) and channel 2k+1 = cos(c * w_k)
    (interleaved). The output is ``concat(PE_y, PE_x)``: y first, then x. At dim = 256 this is the reference's
    128 channels per axis.
    """
    if dim % 4:
        raise ValueError(f"sine embedding size {dim} must be a multiple of 4")
    per_axis = dim // 2
    index = torch.arange(per_axis, device=coord.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / per_axis)
    angles = coord.float()[..., None] * (2 * math.pi) / dim_t  # [..., 2, per_axis]
    pe = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pe[..., 1, :], pe[..., 0, :]), dim=-1).to(coord.dtype)


class TextualFeatureExtender(nn.Module):
    """Word embeddings, coordinate (and its sine embedding) and sentence embedding, paper Sec. III-B."""

    def __init__(self, text_dim: int, hidden_dim: int, proj_layers: int = 1, coordinate: bool = True,
                 sentence: bool = True) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        # Reference: one Linear 768->256 (`text_proj`); paper: "two MLP layers".
        self.text_proj = projection(text_dim, hidden_dim, proj_layers)
        # Eq. 2: coordinate head MLP(D, D, 2, 2 layers) + sigmoid on the projected [CLS] (`coordinate_head`).
        self.coordinate_head = MLP(hidden_dim, hidden_dim, 2, 2) if coordinate else None
        # Eq. 10: sentence embedding from the raw [CLS] (`bertcls_proj`), only needed by the alignment loss.
        self.sentence_proj = nn.Linear(text_dim, hidden_dim) if sentence else None

    def word_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, L, D] (pads included; they are masked as keys later)."""
        return self.text_proj(tokens)

    def coordinate(self, projected_cls: torch.Tensor) -> torch.Tensor:
        """[B, D] projected [CLS] -> [B, 2] (x, y) in [0, 1]."""
        if self.coordinate_head is None:
            raise RuntimeError("this model was built with coord_embed='none' (no coordinate head)")
        return self.coordinate_head(projected_cls).sigmoid()

    def coordinate_embedding(self, coord: torch.Tensor) -> torch.Tensor:
        """[B, 2] -> [B, D] sine embedding (Eq. 3)."""
        return sine_embedding(coord, self.hidden_dim)

    def sentence_embedding(self, raw_cls: torch.Tensor) -> torch.Tensor:
        """[B, text_dim] raw [CLS] -> [B, D] unit-norm sentence embedding."""
        if self.sentence_proj is None:
            raise RuntimeError("this model was built without the alignment loss (no sentence projection)")
        return F.normalize(self.sentence_proj(raw_cls), dim=-1)
