"""The typed batch that crosses from the data pipeline into the model and the engine."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass(frozen=True)
class SampleMeta:
    """What is needed to map a canvas box back to original-image pixels (see transforms.canvas_to_original)."""

    id: str
    expression: str
    image: str
    original_size: tuple[int, int]  # (width, height) of the original image
    scale: tuple[float, float]  # (sx, sy): resized = original * scale (crop applied first, see offset)
    offset: tuple[float, float]  # (dx, dy) in canvas pixels: canvas = original * scale + offset
    canvas_size: int
    original_box: tuple[float, float, float, float] | None = None  # x1y1x2y2 original pixels, when known
    # The whole target set (x1y1x2y2 original pixels) of a generalized record (zero, one or many); None: classic.
    original_boxes: tuple[tuple[float, float, float, float], ...] | None = None


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, S, S] float, ImageNet-normalised, letterboxed (pad value 0)
    image_mask: torch.Tensor  # [B, S, S] bool, True = padding
    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 = real token
    boxes: torch.Tensor | None = None  # [B, 4] float32 (cx, cy, w, h) / S on the canvas
    meta: list[SampleMeta] = field(default_factory=list)
    # Target sets, when a record of the batch has one: [B, T, 4] like ``boxes`` (T = the largest set, at least 1),
    # and which of the T rows are real [B, T] bool (a no-target sample has none).
    target_boxes: torch.Tensor | None = None
    target_valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        # Called by DataLoader(pin_memory=True) for custom batch types.
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **pinned)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``LGRNet.forward`` (targets included when present)."""
        inputs = {
            "images": self.images,
            "image_mask": self.image_mask,
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
        }
        if self.target_boxes is not None:
            inputs["target_boxes"] = self.target_boxes
            inputs["target_valid"] = self.target_valid
        elif self.boxes is not None:
            inputs["target_boxes"] = self.boxes
        return inputs
