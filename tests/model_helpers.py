"""Shared helpers for the model tests: tiny-twin models and random inputs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from tiny_configs import tiny_twin

from lgrnet.model.lgrnet import LGRNet


@contextlib.contextmanager
def one_intraop_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, more threads made the tiny training steps 3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_inputs(cfg, batch: int = 3, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    lengths = torch.tensor([length, 5, 8][:batch] + [6] * max(0, batch - 3))
    ids = torch.randint(1000, 5000, (batch, length), generator=g)
    attention = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * attention
    images = torch.randn(batch, 3, s, s, generator=g)
    mask = torch.zeros(batch, s, s, dtype=torch.bool)
    mask[0, :, s // 2:] = True  # letterbox padding on the right half of sample 0
    if batch > 1:
        mask[1, s * 3 // 4:, :] = True  # bottom quarter of sample 1
    boxes = torch.rand(batch, 4, generator=g) * 0.4 + 0.3
    return {"images": images, "image_mask": mask, "input_ids": ids, "attention_mask": attention,
            "target_boxes": boxes}


def build(preset: str = "lgrnet-swin-s", seed: int = 0, **model_changes) -> tuple[LGRNet, object]:
    cfg = tiny_twin(preset)
    cfg.model = dataclasses.replace(cfg.model, **model_changes)
    torch.manual_seed(seed)
    return LGRNet(cfg.model, cfg.loss), cfg
