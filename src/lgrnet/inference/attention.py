"""The prediction token's attention, from model tensors to things a person can look at (paper Fig. 5 and 6).

The model reports, per TCA/TCF layer, the prediction token's head-averaged attention over the Nv visual tokens
(the H/32 map first, then the H/64 map, row-major; spec section 1) and over the L text tokens. Here the visual
weights are split into one [h, w] grid per feature level, spread over the letterboxed canvas, and cropped and
resized back onto the original image; the text weights are attached to their word pieces and merged into words.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lgrnet.inference.processor import Letterbox


def split_visual_attention(weights: torch.Tensor, token_shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """[Nv] attention weights -> one float32 [h, w] grid per feature level (order of ``token_shapes``)."""
    sizes = [h * w for h, w in token_shapes]
    if sum(sizes) != weights.numel():
        raise ValueError(f"visual attention has {weights.numel()} weights, token shapes {token_shapes} need {sum(sizes)}")
    parts = torch.split(weights.detach().float().cpu(), sizes)
    return [part.reshape(h, w).numpy() for part, (h, w) in zip(parts, token_shapes)]


def attention_on_image(levels: list[np.ndarray], letterbox: Letterbox, normalize: bool = True) -> np.ndarray:
    """Combine the per-level token grids into one [H, W] map over the original image.

    A token of a coarse level covers four times the canvas area of a token one level finer, so each grid is turned
    into attention *density* (weight per canvas pixel) before the levels are summed: a map of where the attention
    mass lies, comparable across levels. The padded part of the canvas is cropped away and the rest resized to the
    original image size (bilinear). With ``normalize`` the map is scaled to [0, 1].
    """
    size = letterbox.canvas_size
    total = torch.zeros(1, 1, size, size)
    for grid in levels:
        h, w = grid.shape
        density = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None] / ((size / h) * (size / w))
        total += F.interpolate(density, size=(size, size), mode="bilinear", align_corners=False)
    width, height = letterbox.original_size
    x0, y0 = letterbox.offset
    x1, y1 = x0 + width * letterbox.scale[0], y0 + height * letterbox.scale[1]
    # The image region on the canvas, at least one canvas pixel in each direction (1 x 4000 images).
    left, top = int(np.floor(x0)), int(np.floor(y0))
    right, bottom = max(int(np.ceil(x1)), left + 1), max(int(np.ceil(y1)), top + 1)
    crop = total[:, :, max(top, 0) : min(bottom, size), max(left, 0) : min(right, size)]
    image_map = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    if normalize:
        low, high = float(image_map.min()), float(image_map.max())
        image_map = (image_map - low) / (high - low) if high > low else np.zeros_like(image_map)
    return image_map.astype(np.float32)


def merge_word_pieces(tokens: list[str], weights: np.ndarray) -> list[tuple[str, float]]:
    """Word-piece tokens and their weights -> (word, summed weight), special tokens dropped.

    WordPiece marks continuations with ``##``; the weight of a word is the attention mass on all its pieces.
    """
    words: list[tuple[str, float]] = []
    for token, weight in zip(tokens, weights):
        if token in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"):
            continue
        if token.startswith("##") and words:
            word, total = words[-1]
            words[-1] = (word + token[2:], total + float(weight))
        else:
            words.append((token, float(weight)))
    return words
