"""What is measured: the full LGR-NET, its backbone floor (:class:`BackboneFloor`), both with random weights, and a
random batch shaped like a collated one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lgrnet.config import Config, load_config
from lgrnet.errors import LGRNetError
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.text import build_text_encoder

if TYPE_CHECKING:
    from lgrnet.benchmark.report import BenchmarkSettings


def benchmark_config(config: Config, image_size: int | None = None) -> Config:
    """The config at the requested size, its text encoder's architecture taken from the known sizes (no hub
    access). The constructors read no weights, so both models keep random ones whatever checkpoints it names."""
    overrides = ["model.text.pretrained=false"]
    if image_size is not None:
        overrides.append(f"model.image_size={int(image_size)}")
    return load_config(config, overrides)


class BackboneFloor(nn.Module):
    """The preset's visual backbone (timm, no QDA, no neck) and text encoder (no fusion): the cost floor.

    Built like the full model's extractors (same timm name and kwargs, same transformers architecture) so that
    ``full / floor`` measures exactly what LGR-NET adds on top of its two backbones.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        import timm

        visual = config.model.visual
        kwargs: dict[str, Any] = dict(visual.timm_kwargs)
        if visual.kind == "swin":
            kwargs.update(img_size=config.model.image_size, strict_img_size=False)
        self.visual = timm.create_model(visual.timm_name, pretrained=False, num_classes=0,
                                        drop_path_rate=visual.drop_path_rate, **kwargs)
        self.text = build_text_encoder(config.model.text)
        if config.model.text.freeze:
            self.text.requires_grad_(False)

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, target_boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Returns a scalar that depends on both outputs (used as the training loss)."""
        features = self.visual.forward_features(images)
        tokens = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return features.float().mean() + tokens.float().mean()


def build_full_model(config: Config) -> nn.Module:
    """The full LGR-NET (random weights when ``config`` comes from :func:`benchmark_config`)."""
    return LGRNet(config.model, config.loss)


def model_builders(config: Config, include_full: bool = True) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """The models to measure by name, "floor" then (if ``include_full``) "full": (description, builder)."""
    builders: dict[str, tuple[str, Callable[[], nn.Module]]] = {
        "floor": (f"{config.model.visual.timm_name} + text encoder (no QDA/neck/fusion)",
                  lambda: BackboneFloor(config)),
    }
    if include_full:
        builders["full"] = (f"LGRNet {config.name}", lambda: build_full_model(config))
    return builders


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); shared tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return total, trainable


def make_inputs(config: Config, batch_size: int, settings: BenchmarkSettings, device: torch.device | str = "cpu",
                vocab_size: int = 30522) -> dict[str, torch.Tensor]:
    """Random model inputs shaped like a collated batch: images, pad mask, token ids + mask, target boxes."""
    size = config.model.image_size
    length = resolve_text_length(config, settings.text_length)
    real = max(2, min(settings.real_tokens, length))
    gen = torch.Generator().manual_seed(settings.seed)
    input_ids = torch.randint(1000, vocab_size, (batch_size, length), generator=gen)
    input_ids[:, 0] = 101  # [CLS]
    input_ids[:, real - 1] = 102  # [SEP]
    input_ids[:, real:] = 0
    attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
    attention_mask[:, :real] = 1
    image_mask = torch.zeros(batch_size, size, size, dtype=torch.bool)
    image_mask[:, size * 3 // 4:, :] = True  # a letterboxed 4:3 image: bottom quarter is padding
    centre = 0.3 + 0.4 * torch.rand(batch_size, 2, generator=gen)
    extent = 0.1 + 0.3 * torch.rand(batch_size, 2, generator=gen)
    inputs = {
        "images": torch.randn(batch_size, 3, size, size, generator=gen),
        "image_mask": image_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "target_boxes": torch.cat([centre, extent], dim=1),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def resolve_text_length(config: Config, text_length: int | None) -> int:
    """Tokens per expression: ``text_length`` if given (at most the model's ``text.max_length``, which its
    position table is sized for), else ``text.max_length`` itself, the padded length of a collated batch."""
    max_length = int(config.model.text.max_length)
    if text_length is None:
        return max_length
    if not 2 <= text_length <= max_length:
        raise LGRNetError(f"--text-length {text_length}: must be between 2 ([CLS] and [SEP]) and the model's "
                          f"model.text.max_length={max_length}")
    return int(text_length)


def inference_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs of an inference forward: the batch without its target boxes."""
    return {k: v for k, v in inputs.items() if k != "target_boxes"}


def loss_of(output: Any) -> torch.Tensor:
    """The training loss of either model's output (LGRNetOutput.loss or the floor's scalar)."""
    if isinstance(output, torch.Tensor):
        return output
    loss = getattr(output, "loss", None)
    if loss is None:
        raise LGRNetError("benchmark: the model returned no loss for target_boxes; cannot time a training step")
    return loss
