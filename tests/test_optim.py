"""The optimizer's parameter groups and hyper-parameters, the logged per-group rates, and the two learning-rate
schedules at their boundaries (one warm-up step, the last warm-up step, a drop inside the warm-up, one step per
epoch, a cosine over a single step). Expected values are the formulas of spec section 10 written out here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lgrnet.config import TrainConfig
from lgrnet.engine.optim import (
    CosineWithWarmup,
    StepDecayWithWarmup,
    build_optimizer,
    cosine_horizon,
    final_lr_factor,
    group_lrs,
)

# Every group at a different rate, so that a group given another group's rate (or the default) shows.
RATES = {"lr": 1e-3, "lr_visual": 2e-4, "lr_neck_lateral": 3e-5, "lr_text": 4e-6, "lr_qda": 5e-4}


class GroupedModel(nn.Module):
    """Parameters named after their group; a frozen one comes first (registration order is iteration order)."""

    GROUP_OF_PREFIX = {"frozen": "visual", "text": "text", "visual": "visual", "neck": "neck_lateral", "qda": "qda",
                       "head": "rest"}

    def __init__(self, extra_group: str | None = None) -> None:
        super().__init__()
        self.frozen_w = nn.Parameter(torch.zeros(2), requires_grad=False)
        for prefix in ("text", "visual", "neck", "qda", "head"):
            setattr(self, f"{prefix}_w", nn.Parameter(torch.zeros(3)))
        self.head_b = nn.Parameter(torch.zeros(1))
        self.extra_group = extra_group

    def param_group(self, name: str) -> str:
        if self.extra_group is not None and name == "head_b":
            return self.extra_group
        return self.GROUP_OF_PREFIX[name.split("_")[0]]


def test_each_group_gets_its_own_rate_and_the_frozen_parameter_is_left_out():
    model = GroupedModel()
    optimizer = build_optimizer(model, TrainConfig(**RATES, weight_decay=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    members = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert members == {"text": ["text_w"], "visual": ["visual_w"], "neck_lateral": ["neck_w"], "qda": ["qda_w"],
                       "rest": ["head_b", "head_w"]}
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"text": 4e-6, "visual": 2e-4, "neck_lateral": 3e-5, "qda": 5e-4, "rest": 1e-3}
    # The scheduler scales from the rate each group starts at.
    assert {g["name"]: g["initial_lr"] for g in torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0).optimizer.param_groups} == rates


def test_adamw_hyper_parameters_of_spec_section_10():
    optimizer = build_optimizer(GroupedModel(), TrainConfig(**RATES, weight_decay=0.05))
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.05), group["name"]


def test_group_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"^param_group\('head_b'\) returned unknown group 'decoder'$"):
        build_optimizer(GroupedModel(extra_group="decoder"), TrainConfig())
    frozen = GroupedModel()
    for param in frozen.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="^the model has no trainable parameters$"):
        build_optimizer(frozen, TrainConfig())


def test_logged_rates_are_keyed_by_group_name():
    optimizer = build_optimizer(GroupedModel(), TrainConfig(**RATES))
    assert group_lrs(optimizer) == {"lr_text": 4e-6, "lr_visual": 2e-4, "lr_neck_lateral": 3e-5, "lr_qda": 5e-4,
                                    "lr_rest": 1e-3}
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    unnamed = torch.optim.SGD([{"params": [a], "lr": 0.25}, {"params": [b], "lr": 0.5}])
    assert group_lrs(unnamed) == {"lr_0": 0.25, "lr_1": 0.5}


def test_final_lr_factor():
    assert final_lr_factor(TrainConfig(lr_drop_epochs=[3, 5], lr_gamma=0.5)) == 0.25  # gamma ** drops
    assert final_lr_factor(TrainConfig(lr_drop_epochs=[], lr_gamma=0.5)) == 1.0
    assert final_lr_factor(TrainConfig(lr_schedule="cosine", min_lr_ratio=0.05, lr_drop_epochs=[3])) == 0.05


def test_cosine_horizon_is_all_epochs_or_max_steps_when_sooner():
    assert cosine_horizon(TrainConfig(epochs=3), steps_per_epoch=5) == 15
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=7), steps_per_epoch=5) == 7
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=20), steps_per_epoch=5) == 15
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=1), steps_per_epoch=5) == 1
    assert cosine_horizon(TrainConfig(epochs=3), steps_per_epoch=0) == 3  # an empty epoch counts as one step


def step_factor(s: int, steps_per_epoch: int, drops: list[int], gamma: float, warmup: int) -> float:
    epoch = s // steps_per_epoch
    warm = (s + 1) / warmup if s < warmup else 1.0
    return gamma ** sum(epoch >= d for d in drops) * warm


@pytest.mark.parametrize(
    ("steps_per_epoch", "drops", "warmup"),
    [
        (1, [1, 2], 1),  # one step per epoch, a warm-up of one step: no warm-up effect at all
        (1, [1], 3),  # the drop at step 1 falls inside the warm-up: both factors apply
        (2, [2], 3),  # the warm-up ends (step 3) before the drop (step 4)
        (3, [], 0),  # constant
    ],
)
def test_step_decay_with_warmup(steps_per_epoch, drops, warmup):
    schedule = StepDecayWithWarmup(steps_per_epoch, list(reversed(drops)), 0.1, warmup)
    got = [schedule(s) for s in range(8)]
    assert got == pytest.approx([step_factor(s, steps_per_epoch, drops, 0.1, warmup) for s in range(8)], rel=1e-12)
    assert max(got) <= 1.0  # never above the base rate, in particular at the last warm-up step


def test_step_decay_by_hand():
    schedule = StepDecayWithWarmup(steps_per_epoch=1, milestones=[1], gamma=0.1, warmup_steps=3)
    assert [schedule(s) for s in range(4)] == pytest.approx([1 / 3, 0.1 * 2 / 3, 0.1, 0.1], rel=1e-12)
    empty_epochs = StepDecayWithWarmup(steps_per_epoch=0, milestones=[2], gamma=0.5, warmup_steps=0)
    assert [empty_epochs(s) for s in range(4)] == [1.0, 1.0, 0.5, 0.5]  # one step per epoch at least


def cosine_factor(s: int, total: int, warmup: int, min_ratio: float) -> float:
    if s < warmup:
        return (s + 1) / warmup
    t = min(1.0, (s - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize(("total", "warmup", "min_ratio"), [(4, 1, 0.2), (2, 1, 0.0), (1, 0, 0.1), (6, 3, 0.1)])
def test_cosine_with_warmup(total, warmup, min_ratio):
    schedule = CosineWithWarmup(total, warmup, min_ratio)
    got = [schedule(s) for s in range(8)]
    assert got == pytest.approx([cosine_factor(s, total, warmup, min_ratio) for s in range(8)], rel=1e-12)
    assert max(got) <= 1.0


def test_cosine_by_hand():
    schedule = CosineWithWarmup(total_steps=4, warmup_steps=1, min_ratio=0.2)
    # After the one warm-up step t = 0, 1/3, 2/3, 1: cos(pi t) = 1, 1/2, -1/2, -1.
    assert [schedule(s) for s in range(6)] == pytest.approx([1.0, 1.0, 0.8, 0.4, 0.2, 0.2], rel=1e-12)
    no_steps = CosineWithWarmup(total_steps=0, warmup_steps=0, min_ratio=0.1)
    assert [no_steps(s) for s in range(3)] == pytest.approx([1.0, 0.1, 0.1], rel=1e-12)
