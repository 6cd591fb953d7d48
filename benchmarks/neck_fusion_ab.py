"""A/B of the neck top-down sum and the last-fusion-layer change at full size (docs/performance.md, "After").

The neck and the TCA/TCF stack are called with the inputs the full ``lgrnet-swin-s`` model (random weights, 640,
batch 1) gives them; the old formulation (interpolate + add; every layer on all rows) and the new one are
alternated in one process, 1 torch thread, process CPU time. Prints the outputs' agreement and the median and
minimum times. Usage: ``.venv/bin/python benchmarks/neck_fusion_ab.py [calls]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lgrnet.model.visual as visual
from lgrnet.benchmark import BenchmarkSettings, benchmark_config, make_inputs
from lgrnet.model.lgrnet import LGRNet


def interpolate_add(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """The top-down step before the change."""
    return fine + F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")


def main(calls: int = 25) -> None:
    torch.set_num_threads(1)
    cfg = benchmark_config("lgrnet-swin-s")
    torch.manual_seed(0)
    model = LGRNet(cfg.model, cfg.loss).eval()
    inputs = {k: v for k, v in make_inputs(cfg, 1, BenchmarkSettings()).items() if k != "target_boxes"}
    neck, reasoning = model.visual.neck, model.reasoning
    captured: dict[str, tuple] = {}
    neck.register_forward_pre_hook(lambda _m, args: captured.update(neck=args))
    reasoning.register_forward_pre_hook(lambda _m, args, kwargs: captured.update(fusion=(args, kwargs)),
                                        with_kwargs=True)
    with torch.inference_mode():
        model(**inputs)
    fast_add = visual.add_upsampled_
    fusion_args, fusion_kwargs = captured["fusion"]

    def run_neck(add: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        visual.add_upsampled_ = add  # the neck looks the step up in its module at call time
        try:
            return neck(*captured["neck"])
        finally:
            visual.add_upsampled_ = fast_add

    def run_fusion(full: bool) -> torch.Tensor:
        # full: every layer on the whole sequence, as before the change.
        return reasoning(*fusion_args, **fusion_kwargs, last_layer_pred_only=not full)[0]

    cases: dict[str, Callable[[], object]] = {
        "neck, interpolate + add": lambda: run_neck(interpolate_add),
        "neck, in-place broadcast add": lambda: run_neck(fast_add),
        "fusion, last layer on all rows": lambda: run_fusion(True),
        "fusion, last layer on prediction rows": lambda: run_fusion(False),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        old, new = run_neck(interpolate_add), run_neck(fast_add)
        print("neck outputs torch.equal:", all(torch.equal(a, b) for a, b in zip(old, new)))
        diff = (run_fusion(True) - run_fusion(False)).abs().max().item()
        print(f"fusion prediction states, max abs difference: {diff:.3g}")
        for _ in range(calls):
            for name, fn in cases.items():
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values) * 1e3:.1f} ms, min {min(values) * 1e3:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
