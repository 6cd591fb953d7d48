"""Where does a CPU training step of ``lgrnet-tiny`` spend its time, and what do cheaper settings buy?

Two measurements, written as JSON (``--out``) and printed as tables:

1. **Breakdown** of one training step (batch 32 by default) of the preset: wall time of forward, backward and
   optimizer step, the forward split by component (MiniLM text encoder, patch embedding, each Swin stage, each
   stage's query-dynamic attention, the neck (with its QDA and stride-4 lateral), projections + TFE, the
   reasoning stack (TCA/TCF fusion), head, criterion) with forward hooks, and the top operators of the whole step
   from ``torch.profiler``.
2. **Settings sweep**: median step time (forward + backward + AdamW) for variants given as config overrides.

Random inputs (the step time does not depend on the pixels); the load average is recorded with every number,
because the machine is shared. Example::

    python scripts/profile_tiny_step.py --out runs/profile/tiny.json --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from lgrnet.config import load_config
from lgrnet.engine.optim import build_optimizer
from lgrnet.model.builder import build_model

# The profile in docs/synthref.md was taken on the first lgrnet-tiny (slim Swin at 256 px); these overrides
# rebuild that model from today's preset (a 3-stage ResNet-18 at 128 px) so the figures stay reproducible.
SWIN_TINY_256 = [
    "model.visual.kind=swin", "model.visual.timm_name=swin_tiny_patch4_window7_224",
    "model.visual.timm_kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8]}",
    "model.image_size=256", "model.text.max_length=40", "model.dropout=0.1", "model.visual_pos_init=normal",
    "model.visual_pos_input=false",
]

SWEEP: dict[str, list[str]] = {
    "lgrnet-tiny (256 px, max_length 40)": [],
    "text.max_length 20": ["model.text.max_length=20"],
    "image 192": ["model.image_size=192"],
    "image 192 + max_length 20": ["model.image_size=192", "model.text.max_length=20"],
    "neck_channels 64": ["model.visual.neck_channels=64"],
    "qda_rank 4, qda_reduction 32": ["model.visual.qda_rank=4", "model.visual.qda_reduction=32"],
    "no QDA (query_modulation off)": ["model.visual.query_modulation=false"],
    "Swin depths [1,1,1,1]": ["model.visual.timm_kwargs.depths=[1,1,1,1]"],
    "2 fusion layers": ["model.num_layers=2"],
    "lgrnet-tiny again (drift check)": [],
}


def make_batch(config, batch: int, length: int) -> dict[str, torch.Tensor]:
    size = config.model.image_size
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[:, size * 3 // 4:, :] = True  # a letterbox band, as real canvases have
    attention = torch.zeros(batch, length, dtype=torch.long)
    attention[:, :12] = 1  # SynthRef expressions are ~10 word pieces
    ids = torch.randint(1000, 20000, (batch, length), generator=gen) * attention
    cxcy = torch.rand(batch, 2, generator=gen) * 0.5 + 0.25
    wh = torch.rand(batch, 2, generator=gen) * 0.2 + 0.05
    return {"images": torch.randn(batch, 3, size, size, generator=gen), "image_mask": mask, "input_ids": ids,
            "attention_mask": attention, "target_boxes": torch.cat([cxcy, wh], 1)}


def build(overrides: list[str]):
    config = load_config("lgrnet-tiny", SWIN_TINY_256 + list(overrides))
    torch.manual_seed(0)
    model = build_model(config.model, config.loss).train()
    optimizer = build_optimizer(model, config.train)
    return config, model, optimizer


def step(model, optimizer, inputs) -> dict[str, float]:
    """Wall seconds per phase, and ``cpu``: the process's CPU seconds for the whole step (all threads). On a
    shared machine the CPU time is the steadier number: it counts the work, not the wait for a core."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = model(**inputs)
    t1 = time.perf_counter()
    out.loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0,
            "cpu": time.process_time() - c0}


def component_modules(model) -> dict[str, torch.nn.Module]:
    """The parts timed in the breakdown (nested: a stage's QDA is outside the stage, the neck holds its QDA)."""
    parts: dict[str, torch.nn.Module] = {"text encoder (MiniLM)": model.text}
    backbone = model.visual.backbone
    if hasattr(backbone, "patch_embed"):
        parts["swin patch embed"] = backbone.patch_embed
    for i, layer in enumerate(getattr(backbone, "layers", [])):
        parts[f"swin stage {i + 1}"] = layer
    if model.visual.stage_qda is not None:
        for i, qda in enumerate(model.visual.stage_qda):
            parts[f"QDA after stage {i + 1}"] = qda
    parts["neck (laterals, top-down, QDA-gated bottom-up)"] = model.visual.neck
    neck = model.visual.neck
    if hasattr(neck, "laterals"):
        parts["  neck lateral at stride 4"] = neck.laterals[0]
    if getattr(neck, "down_qda", None) is not None:
        for i, qda in enumerate(neck.down_qda):
            parts[f"  neck QDA {i + 1}"] = qda
    parts["TFE (text projections, coordinate head)"] = model.tfe
    parts["reasoning stack (TCA/TCF fusion)"] = model.reasoning
    parts["prediction head"] = model.head
    parts["criterion (L1, GIoU, alignment)"] = model.criterion
    return parts


def forward_breakdown(model, inputs, repeats: int) -> dict[str, float]:
    """Median forward CPU seconds (process time, all threads) per component over ``repeats`` forward passes
    (with autograd, as in training)."""
    times: dict[str, list[float]] = {}
    handles = []
    for name, module in component_modules(model).items():
        starts: list[float] = []

        def pre(_m, _a, starts=starts):
            starts.append(time.process_time())

        def post(_m, _a, _o, name=name, starts=starts):
            times.setdefault(name, []).append(time.process_time() - starts.pop())

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        for _ in range(repeats):
            out = model(**inputs)
            out.loss.backward()
            model.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
    # Each timed module runs once per forward pass: the median over passes.
    return {k: statistics.median(v) for k, v in times.items()}


def top_ops(model, optimizer, inputs, limit: int) -> list[dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, optimizer, inputs)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:limit]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1.0
    return [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", default=None, help="names of sweep settings to run (default all)")
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/profile/tiny_step.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpus": os.cpu_count()}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    if not args.skip_breakdown:
        config, model, optimizer = build([])
        inputs = make_batch(config, args.batch, config.model.text.max_length)
        step(model, optimizer, inputs)  # warm-up
        load0 = os.getloadavg()[0]
        phases = [step(model, optimizer, inputs) for _ in range(args.steps)]
        parts = forward_breakdown(model, inputs, args.steps)
        ops = top_ops(model, optimizer, inputs, 15)
        report["breakdown"] = {
            "load_avg_1min": [load0, os.getloadavg()[0]],
            "phases_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
            "forward_components_s": parts,
            "top_ops": ops,
        }
        save()
        print(f"\nOne training step, batch {args.batch}, load average {load0:.1f}:")
        for k, v in report["breakdown"]["phases_s"].items():
            print(f"  {k:10s} {v:7.2f} s")
        fwd = report["breakdown"]["phases_s"]["forward"]
        print("Forward by component (median CPU s, share of the summed top-level parts):")
        top = sum(v for k, v in parts.items() if not k.startswith(" "))
        for k, v in parts.items():
            print(f"  {k:50s} {v:7.3f}  {100 * v / top:5.1f}%")
        print(f"  (forward wall {fwd:.2f} s)")
        print("Top operators of the whole step (self CPU time):")
        for row in ops:
            print(f"  {row['op']:40s} {row['self_s']:7.2f} s {100 * row['share']:5.1f}%  x{row['calls']}")
        del model, optimizer

    report["sweep"] = {}
    for name, overrides in SWEEP.items():
        if args.only and name not in args.only:
            continue
        config, model, optimizer = build(overrides)
        inputs = make_batch(config, args.batch, config.model.text.max_length)
        step(model, optimizer, inputs)  # two warm-up steps: the first ones after building pay for allocations
        step(model, optimizer, inputs)
        load0 = os.getloadavg()[0]
        runs = [step(model, optimizer, inputs) for _ in range(args.steps)]
        wall = statistics.median(r["total"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
        report["sweep"][name] = {"overrides": overrides, "step_s": wall, "step_cpu_s": cpu, "runs": runs,
                                 "load_avg_1min": [load0, os.getloadavg()[0]], "trainable_params": trainable}
        save()
        print(f"{name:40s} {wall:6.2f} s/step wall, {cpu:6.2f} CPU-s/step  (load {load0:.1f}, "
              f"{trainable / 1e6:.2f} M trainable)", flush=True)
        del model, optimizer


if __name__ == "__main__":
    main()
