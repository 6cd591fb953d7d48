"""What a benchmark run asks for (:class:`BenchmarkSettings`) and what it gives back (:class:`BenchmarkReport`):
the per-model results, the full / floor ratios, the JSON and the table the CLI prints."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class BenchmarkSettings:
    """What to measure and how (defaults: a quick CPU run at batch 1)."""

    device: str = "cpu"
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    precision: Precision = "fp32"
    compile: bool = False
    # Batch-1 latency with the eager forward captured once in a CUDA graph and replayed; GPU only.
    cuda_graphs: bool = False
    train: bool = False
    train_batch_size: int | None = None  # default: the largest inference batch size
    image_size: int | None = None  # default: the config's model.image_size
    text_length: int | None = None  # tokens per expression; default: the config's model.text.max_length
    # Real tokens per expression ([CLS] ... [SEP]); the rest is padding, as in a collated RefCOCO batch.
    real_tokens: int = 12
    warmup: int = 3
    repeats: int = 20
    train_repeats: int = 10
    flops: bool = True
    include_full: bool = True
    # Samples/s one data-loader worker produces (lgrnet.benchmark.data_rate); None = not reported.
    data_rate_per_worker: float | None = None
    # Measure that rate here (one thread = one worker) when training is timed.
    measure_data: bool = False
    # Folder of JPEGs the data-rate measurement decodes; None = synthetic COCO-sized JPEGs.
    data_images: str | None = None
    # CPU only: inclusive time of the full model's parts (text, backbone stages, QDA, neck, fusion, head).
    breakdown: bool = False
    seed: int = 0


@dataclass
class InferenceResult:
    batch_size: int
    latency_p50_ms: float
    latency_p90_ms: float
    images_per_s: float
    peak_memory_mib: float | None
    mode: str = "eager"  # eager | compiled | cuda-graphs
    samples_ms: list[float] = field(default_factory=list)
    # CPU runs: process CPU time per call (all threads), robust to other jobs on a shared machine.
    cpu_time_p50_ms: float | None = None
    cpu_samples_ms: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    batch_size: int
    step_p50_ms: float
    step_p90_ms: float
    samples_per_s: float
    peak_memory_mib: float | None


@dataclass
class ModelResult:
    name: str  # "full" | "floor"
    description: str
    parameters: int
    trainable_parameters: int
    gflops: float | None = None  # per image, batch 1, fp32 graph
    gmacs: float | None = None
    flops_by_module: dict[str, float] = field(default_factory=dict)  # GFLOPs per top-level child
    inference: list[InferenceResult] = field(default_factory=list)
    train: TrainResult | None = None


@dataclass
class BenchmarkReport:
    config_name: str
    image_size: int
    settings: BenchmarkSettings
    environment: dict[str, Any]
    models: dict[str, ModelResult]
    ratios: dict[str, float] = field(default_factory=dict)
    data_loading: dict[str, Any] | None = None
    # Median inclusive process CPU time per forward of each model's parts (``--breakdown``): model -> part -> ms.
    breakdown_ms: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """One human-readable table (the CLI prints it) followed by the ratios."""
        return format_table(self)


def compute_ratios(report: BenchmarkReport) -> dict[str, float]:
    """full / floor for parameters, FLOPs, latency (per batch and mode), throughput and training rate."""
    full, floor = report.models.get("full"), report.models.get("floor")
    if full is None or floor is None:
        return {}
    ratios: dict[str, float] = {"parameters": round(full.parameters / floor.parameters, 4)}
    if full.gflops and floor.gflops:
        ratios["gflops"] = round(full.gflops / floor.gflops, 4)
    floor_inf = {(r.batch_size, r.mode): r for r in floor.inference}
    for r in full.inference:
        base = floor_inf.get((r.batch_size, r.mode))
        if base is not None:
            suffix = "" if r.mode == "eager" else f"_{r.mode}"
            ratios[f"latency_b{r.batch_size}{suffix}"] = round(r.latency_p50_ms / base.latency_p50_ms, 4)
            ratios[f"images_per_s_b{r.batch_size}{suffix}"] = round(r.images_per_s / base.images_per_s, 4)
    if full.train and floor.train:
        ratios["train_samples_per_s"] = round(full.train.samples_per_s / floor.train.samples_per_s, 4)
    return ratios


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: BenchmarkReport) -> str:
    s = report.settings
    head = (f"{report.config_name} | {report.environment.get('gpu') or report.environment['cpu']} | "
            f"{s.precision}{' compiled' if s.compile else ''} | image {report.image_size} | "
            f"{'text ' + str(s.text_length) + ' tokens | ' if s.text_length else ''}"
            f"torch {report.environment['torch']}")
    columns = ["model", "mode", "batch", "params(M)", "GFLOPs", "GMACs", "p50 ms", "p90 ms", "cpu ms", "img/s",
               "peak MiB", "train/s", "train MiB"]
    rows = []
    for m in report.models.values():
        inference = m.inference or [None]
        for i, r in enumerate(inference):
            train = m.train if i == 0 else None
            rows.append([
                m.name, r.mode if r else "-", str(r.batch_size) if r else "-",
                _fmt(m.parameters / 1e6, ".2f"), _fmt(m.gflops, ".2f"), _fmt(m.gmacs, ".2f"),
                _fmt(r.latency_p50_ms if r else None, ".1f"), _fmt(r.latency_p90_ms if r else None, ".1f"),
                _fmt(r.cpu_time_p50_ms if r else None, ".1f"),
                _fmt(r.images_per_s if r else None, ".2f"), _fmt(r.peak_memory_mib if r else None, ".0f"),
                _fmt(train.samples_per_s if train else None, ".2f"),
                _fmt(train.peak_memory_mib if train else None, ".0f"),
            ])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    if report.ratios:
        lines.append("full / floor: " + ", ".join(f"{k} {v:.3f}" for k, v in report.ratios.items()))
    full = report.models.get("full")
    if full and full.flops_by_module:
        lines.append("full GFLOPs by module: " + ", ".join(f"{k} {v:.2f}" for k, v in full.flops_by_module.items()))
    if report.data_loading:
        d = report.data_loading
        lines.append(f"data loading: {d['workers_needed']} workers at {d['per_worker_samples_per_s']:.1f} samples/s "
                     f"each feed {d['train_samples_per_s']:.1f} training samples/s ({d['model']} model)")
    for name, parts in (report.breakdown_ms or {}).items():
        lines.append(f"{name} parts, CPU ms (inclusive): " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
