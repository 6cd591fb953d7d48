"""Prediction head (paper Sec. III-C, Eq. 9; spec section 8) and the small MLP used across the model."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (DETR-style; parameter names ``layers.{i}``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def projection(in_dim: int, out_dim: int, num_layers: int) -> nn.Module:
    """Projection of extractor features to the hidden size: one Linear (reference) or an MLP (paper: two layers)."""
    return nn.Linear(in_dim, out_dim) if num_layers == 1 else MLP(in_dim, out_dim, out_dim, num_layers)


class PredictionHead(MLP):
    """Box head shared by every reasoning layer: MLP(D, D, 4, 3 layers) + sigmoid -> (cx, cy, w, h) on the canvas.

    Weights are Xavier-uniform (the only explicitly initialised module of the reference), biases torch default.
    """

    def __init__(self, hidden_dim: int) -> None:
        super().__init__(hidden_dim, hidden_dim, 4, 3)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).sigmoid()
