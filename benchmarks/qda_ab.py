"""A/B of the factorised QDA gates and the folded spatial-gate projection at full size (docs/performance.md,
"After (2)").

The neck and the four stage QDA modules are called with the inputs the full ``lgrnet-swin-s`` model (random
weights, 640, batch 1, QDA ``V`` drawn at random so that no gate is the init's constant 0.5) gives them. Before: the
neck gates the stride-4/8/16 maps through the transposed token view, then pools; every DynamicLinear is
factorised (``proj`` then ``V``). After: gate factors + pool on the channels-first map, folded projections. The
variants are alternated in one process, 1 torch thread, process CPU time, under ``torch.inference_mode``.
Prints the outputs' largest differences and the median / minimum times.
Usage: ``.venv/bin/python benchmarks/qda_ab.py [calls]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lgrnet.benchmark import BenchmarkSettings, benchmark_config, make_inputs
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.qda import DynamicLinear, QueryDynamicAttention
from lgrnet.model.visual import SoftDownsampleNeck, add_upsampled_


def gate_map_by_tokens(qda: QueryDynamicAttention, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``forward_map`` before the change: the token path on the transposed view, back to NCHW."""
    b, c, h, w = x.shape
    return qda(x.flatten(2).transpose(1, 2), text).transpose(1, 2).reshape(b, c, h, w)


def neck_before(neck: SoftDownsampleNeck, features: list[torch.Tensor], text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``SoftDownsampleNeck.forward`` before the change (gated full-resolution map, then pool)."""
    levels = [lateral(f) for lateral, f in zip(neck.laterals, features)]
    for i in range(len(levels) - 1, 0, -1):
        levels[i - 1] = add_upsampled_(levels[i - 1], levels[i])
    for i in range(len(levels) - 1):
        x = gate_map_by_tokens(neck.down_qda[i], levels[i], text)
        levels[i + 1] = levels[i + 1] + F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
    top = levels[-1]
    return top, top[..., ::2, ::2]


def folding(enabled: bool) -> None:
    DynamicLinear.fold_at_inference = enabled


def main(calls: int = 25) -> None:
    torch.set_num_threads(1)
    cfg = benchmark_config("lgrnet-swin-s")
    torch.manual_seed(0)
    model = LGRNet(cfg.model, cfg.loss).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "qda" in name and name.endswith(".V"):
                p.normal_(0, 0.02)
    inputs = {k: v for k, v in make_inputs(cfg, 1, BenchmarkSettings()).items() if k != "target_boxes"}
    visual = model.visual
    neck, stage_qda = visual.neck, list(visual.stage_qda)
    captured: dict[str, tuple] = {}
    neck.register_forward_pre_hook(lambda _m, args: captured.update(neck=args))
    for i, qda in enumerate(stage_qda):
        qda.register_forward_pre_hook(lambda _m, args, i=i: captured.update({f"stage{i}": args}))
    with torch.inference_mode():
        model(**inputs)
    features, text = captured["neck"]

    def run_neck(before: bool, fold: bool) -> tuple[torch.Tensor, torch.Tensor]:
        folding(fold)
        return neck_before(neck, features, text) if before else neck(features, text)

    def run_stage_qda(fold: bool) -> list[torch.Tensor]:
        folding(fold)
        return [qda(*captured[f"stage{i}"]) for i, qda in enumerate(stage_qda)]

    cases: dict[str, Callable[[], object]] = {
        "neck, before (token-view gates, then pool; factorised)": lambda: run_neck(True, False),
        "neck, gate factors + pool, factorised": lambda: run_neck(False, False),
        "neck, after (gate factors + pool, folded)": lambda: run_neck(False, True),
        "stage QDA x4, before (factorised)": lambda: run_stage_qda(False),
        "stage QDA x4, after (folded)": lambda: run_stage_qda(True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        with torch.inference_mode():
            old_top, new_top = run_neck(True, False)[0], run_neck(False, True)[0]
            print(f"neck output: max abs difference {(old_top - new_top).abs().max().item():.3g}, "
                  f"max |value| {old_top.abs().max().item():.3g}")
            for i, (a, b) in enumerate(zip(run_stage_qda(False), run_stage_qda(True))):
                print(f"stage QDA {i}: max abs difference {(a - b).abs().max().item():.3g}, "
                      f"max |value| {a.abs().max().item():.3g}")
            for _ in range(calls):
                for name, fn in cases.items():
                    start = time.process_time()
                    fn()
                    times[name].append(time.process_time() - start)
    finally:
        folding(True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values) * 1e3:.1f} ms, min {min(values) * 1e3:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
