"""Optimizer and learning-rate schedule of spec section 10.

AdamW (0.9, 0.999, eps 1e-8) with weight decay on every trainable parameter, as the reference; parameter groups
by :meth:`LGRNet.param_group`: the backbone proper, the neck's 1x1 laterals and the text encoder at 1e-5, the
query-dynamic attention and everything else at 1e-4. Frozen parameters are left out. The schedule is the
reference's step decay over epochs (x ``lr_gamma`` at each of ``lr_drop_epochs``), or with ``lr_schedule:
cosine`` a cosine decay over the run's optimizer steps (all epochs, or ``max_steps`` when that ends it sooner) down
to ``min_lr_ratio``; both with an optional linear warm-up over the first optimizer steps, stepped once per optimizer
step. A cosine run with a wall-clock budget (``time_limit_minutes``) decays over the steps that fit in it: the
trainer re-estimates the horizon from its throughput as it goes (:func:`time_budget_horizon`).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch
from torch import nn

from lgrnet.config import TrainConfig

GROUP_LR_FIELDS = {"visual": "lr_visual", "neck_lateral": "lr_neck_lateral", "text": "lr_text", "qda": "lr_qda",
                   "rest": "lr"}


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per ``model.param_group(name)`` that has any."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = model.param_group(name)  # type: ignore[operator]
        if group not in GROUP_LR_FIELDS:
            raise ValueError(f"param_group({name!r}) returned unknown group {group!r}")
        groups.setdefault(group, []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    param_groups = [
        {"params": params, "lr": getattr(train, GROUP_LR_FIELDS[group]), "name": group}
        for group, params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=train.weight_decay)


class StepDecayWithWarmup:
    """lr factor at optimizer step s: ``gamma ** (#milestones <= epoch(s)) * min(1, (s + 1) / warmup)``.

    A plain object (its ``__dict__`` goes into the scheduler's state dict, loadable with ``weights_only``)."""

    def __init__(self, steps_per_epoch: int, milestones: list[int], gamma: float, warmup_steps: int):
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.milestones = sorted(milestones)
        self.gamma = gamma
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        factor = self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor


class CosineWithWarmup:
    """lr factor at optimizer step s: linear warm-up over ``warmup_steps``, then
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1 over the remaining steps up
    to ``total_steps`` (and staying at ``min_ratio`` after). A plain object, like :class:`StepDecayWithWarmup`."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float):
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_horizon(train: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps the cosine decays over: all epochs, or ``max_steps`` when that ends the run sooner."""
    total = train.epochs * max(1, steps_per_epoch)
    return min(total, train.max_steps) if train.max_steps > 0 else total


def time_budget_horizon(step: int, steps_per_s: float, remaining_s: float, cap: int) -> int:
    """The step at which a wall-clock budget runs out: ``step`` plus what ``remaining_s`` holds at the measured
    rate, at most ``cap`` (the step or epoch limit) and at least one step ahead."""
    return min(cap, step + max(1, int(steps_per_s * max(0.0, remaining_s))))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule: StepDecayWithWarmup | CosineWithWarmup
    if train.lr_schedule == "cosine":
        schedule = CosineWithWarmup(cosine_horizon(train, steps_per_epoch), train.warmup_steps, train.min_lr_ratio)
    else:
        schedule = StepDecayWithWarmup(steps_per_epoch, list(train.lr_drop_epochs), train.lr_gamma,
                                       train.warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def final_lr_factor(train: TrainConfig) -> float:
    """The factor the schedule of ``train`` ends at (after warm-up): ``lr_gamma`` per drop, or ``min_lr_ratio``."""
    if train.lr_schedule == "cosine":
        return train.min_lr_ratio
    return train.lr_gamma ** len(train.lr_drop_epochs)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
