"""FLOPs of one inference forward with ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lgrnet.benchmark.models import inference_inputs


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_counter() -> FlopCounterMode:
    # torch counts the CUDA SDPA kernels but not the CPU flash kernel; count it alike so CPU and GPU agree.
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, depth=None, custom_mapping=mapping)


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """FLOPs of one inference forward, total and per top-level child module (``visual``, ``text``, ...)."""
    counter = _flop_counter()
    was_training = model.training
    # No parameter may require grad: the counter's module tracker fails on a parameter passed as a module input
    # under no_grad (e.g. a position table handed to the fusion stack).
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad(), counter:
            model(**inference_inputs(inputs))
    finally:
        model.train(was_training)
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    by_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        if len(parts) == 2:  # "<RootClass>.<child>"
            by_module[parts[1]] = sum(ops.values())
    return counter.get_total_flops(), by_module
