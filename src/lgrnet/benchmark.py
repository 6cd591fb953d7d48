"""Speed, FLOPs and memory of LGR-NET measured against its own backbone floor (issue 7).

Almost all of LGR-NET's cost is its two backbones (paper Sec. IV-D: 274.18M parameters, 79.87 GFLOPs): Swin-S (or
ResNet-101) at 640x640 and BERT-base at 40 tokens. Whatever the query-dynamic attention, the neck and the TCA/TCF
fusion add is overhead on top of that *floor*. This module builds both the full model and a :class:`BackboneFloor`
(the preset's timm backbone and text encoder, nothing else) with random weights, and measures them in the same run:

* parameters and FLOPs (``torch.utils.flop_counter.FlopCounterMode``; one multiply-add = 2 FLOPs, GMACs = GFLOPs/2),
* inference latency p50/p90 and images/s per batch size (warm-up, then CUDA events on GPU / ``perf_counter`` on
  CPU; ``torch.inference_mode``; optional bf16/fp16 autocast, ``torch.compile`` and CUDA graphs),
* peak GPU memory (``torch.cuda.max_memory_allocated``),
* training samples/s of a full AdamW step (forward, loss, backward, step) and its peak memory,
* ratios full / floor, and the number of data-loader workers needed to feed the measured training rate.

On a CPU the two models are timed alternately (floor, full, floor, full, ...) so that load from other processes
hits both alike; the per-pair ratio's median is reported besides the ratio of medians.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lgrnet.config import Config, load_config
from lgrnet.errors import LGRNetError

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------------------
# Settings and results


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
    # Samples/s one data-loader worker produces (benchmarks/data_pipeline.py); None = not reported.
    data_rate_per_worker: float | None = None
    # Measure that rate here with benchmarks/data_pipeline.py (one thread = one worker) when training is timed.
    measure_data: bool = False
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


# --------------------------------------------------------------------------------------------------------------
# Models


def benchmark_config(config: Config, image_size: int | None = None) -> Config:
    """The config with random weights everywhere (no hub access, no checkpoint files) at the requested size."""
    overrides = ["model.text.pretrained=false", "model.visual.checkpoint=null"]
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
        self.text = _text_encoder(config)
        if config.model.text.freeze:
            self.text.requires_grad_(False)

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, target_boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Returns a scalar that depends on both outputs (used as the training loss)."""
        features = self.visual.forward_features(images)
        tokens = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return features.float().mean() + tokens.float().mean()


def _text_encoder(config: Config) -> nn.Module:
    try:
        from lgrnet.model.text import build_text_encoder
    except ImportError:  # the model package is not there yet: a BERT from its config (bert-base sizes by default)
        from transformers import BertConfig, BertModel

        text = config.model.text
        if text.name not in ("", "bert-base-uncased"):
            raise LGRNetError(f"benchmark: text encoder {text.name!r} needs lgrnet.model.text") from None
        return BertModel(BertConfig(**text.config_overrides), add_pooling_layer=False)
    return build_text_encoder(config.model.text)


def build_full_model(config: Config) -> nn.Module:
    """The full LGR-NET (random weights)."""
    try:
        from lgrnet.model.lgrnet import LGRNet
    except ImportError as exc:
        raise LGRNetError(f"benchmark: the full model is not available ({exc}); use --floor-only") from None
    return LGRNet(config.model, config.loss)


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


def _inference_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if k != "target_boxes"}


def _loss_of(output: Any) -> torch.Tensor:
    """The training loss of either model's output (LGRNetOutput.loss or the floor's scalar)."""
    if isinstance(output, torch.Tensor):
        return output
    loss = getattr(output, "loss", None)
    if loss is None:
        raise LGRNetError("benchmark: the model returned no loss for target_boxes; cannot time a training step")
    return loss


# --------------------------------------------------------------------------------------------------------------
# FLOPs


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_counter(depth: int | None = None):
    from torch.utils.flop_counter import FlopCounterMode

    # torch counts the CUDA SDPA kernels but not the CPU flash kernel; count it alike so CPU and GPU agree.
    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, depth=depth, custom_mapping=mapping)


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
            model(**_inference_inputs(inputs))
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


# --------------------------------------------------------------------------------------------------------------
# Timing


def _autocast(device: torch.device, precision: Precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Times one call: CUDA events on GPU (no host sync inside the measured region), perf_counter on CPU.

    On CPU it also records the process CPU time of each call (all threads) in ``cpu_ms``: on a machine shared with
    other jobs, wall time includes waiting for a core while CPU time counts only this process's own work.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ms: list[float] = []

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        start_cpu, start_s = time.process_time(), time.perf_counter()
        fn()
        wall = (time.perf_counter() - start_s) * 1000.0
        self.cpu_ms.append((time.process_time() - start_cpu) * 1000.0)
        return wall


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    out: dict[str, float | None] = {"mib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["mib"] = torch.cuda.max_memory_allocated(device) / 2**20


def _inference_fn(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                  precision: Precision) -> Callable[[], Any]:
    kwargs = _inference_inputs(inputs)

    def run() -> Any:
        with torch.inference_mode(), _autocast(device, precision):
            return model(**kwargs)

    return run


def _compiled(model: nn.Module, mode: str | None) -> nn.Module:
    # dynamic=False: the benchmark's shapes are fixed; every batch size gets its own specialised graph.
    return torch.compile(model, mode=mode, dynamic=False)  # type: ignore[return-value]


def _cuda_graph_fn(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                   precision: Precision, warmup: int) -> Callable[[], Any]:
    """One inference forward captured in a CUDA graph (static inputs); the returned function replays it.

    Warm-up runs on a side stream first, as graph capture requires; autocast's weight-cast cache is off during
    capture so that the casts are part of the graph.
    """
    kwargs = _inference_inputs(inputs)

    def forward() -> Any:
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if precision != "fp32":
                stack.enter_context(torch.autocast("cuda", dtype=_DTYPES[precision], cache_enabled=False))
            return model(**kwargs)

    graph = torch.cuda.CUDAGraph()
    with _without_mask_skip_checks():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                forward()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(graph):
            forward()
    return graph.replay


@contextlib.contextmanager
def _without_mask_skip_checks() -> Iterator[None]:
    """Turns off transformers' "is every token real?" test before SDPA, which reads the mask on the host.

    That read (``padding_mask.all()`` -> bool) is a device-to-host sync, which CUDA graph capture forbids. Without
    the test the explicit mask is always passed to SDPA: the same result, one fewer shortcut. Benchmark-only.
    """
    from unittest import mock

    try:
        import transformers.masking_utils as masking
    except ImportError:
        yield
        return
    with contextlib.ExitStack() as stack:
        for name in ("_ignore_bidirectional_mask_sdpa", "_ignore_causal_mask_sdpa"):
            if hasattr(masking, name):
                stack.enter_context(mock.patch.object(masking, name, lambda *args, **kwargs: False))
        yield


def time_inference(models: dict[str, nn.Module | Callable[[], Any]], inputs: dict[str, torch.Tensor],
                   settings: BenchmarkSettings, device: torch.device, interleave: bool,
                   cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Per-call latencies (ms) after warm-up. ``interleave`` alternates the models call by call.

    A value that is not an ``nn.Module`` is called as is (a prepared replay function). On CPU, ``cpu_times`` (if
    given) receives each call's process CPU time per model.
    """
    fns = {name: _inference_fn(m, inputs, device, settings.precision) if isinstance(m, nn.Module) else m
           for name, m in models.items()}
    timers = {name: _Timer(device) for name in fns}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    if interleave:
        for fn in fns.values():
            for _ in range(settings.warmup):
                fn()
        for _ in range(settings.repeats):
            for name, fn in fns.items():
                samples[name].append(timers[name](fn))
    else:
        for name, fn in fns.items():
            for _ in range(settings.warmup):
                fn()
            _synchronize(device)
            samples[name] = [timers[name](fn) for _ in range(settings.repeats)]
    if cpu_times is not None and device.type == "cpu":
        cpu_times.update({name: t.cpu_ms for name, t in timers.items()})
    return samples


def measure_inference(model: nn.Module, inputs: dict[str, torch.Tensor], settings: BenchmarkSettings,
                      device: torch.device, mode: str = "eager") -> InferenceResult:
    """Latency p50/p90, images/s and peak memory of one model at one batch size."""
    batch = inputs["images"].shape[0]
    cpu: dict[str, list[float]] = {}
    with _peak_memory(device) as peak:
        runner: nn.Module | Callable[[], Any] = model
        if mode == "cuda-graphs":
            runner = _cuda_graph_fn(model, inputs, device, settings.precision, settings.warmup)
        times = time_inference({"m": runner}, inputs, settings, device, interleave=False, cpu_times=cpu)["m"]
    return _inference_result(batch, times, peak["mib"], mode, cpu.get("m"))


def _inference_result(batch: int, times: list[float], peak_mib: float | None, mode: str,
                      cpu_ms: list[float] | None = None) -> InferenceResult:
    p50 = statistics.median(times)
    return InferenceResult(batch_size=batch, latency_p50_ms=p50, latency_p90_ms=percentile(times, 90),
                           images_per_s=batch * 1000.0 / p50, peak_memory_mib=peak_mib, mode=mode,
                           samples_ms=[round(t, 3) for t in times],
                           cpu_time_p50_ms=statistics.median(cpu_ms) if cpu_ms else None,
                           cpu_samples_ms=[round(t, 3) for t in cpu_ms or []])


def measure_training(model: nn.Module, inputs: dict[str, torch.Tensor], settings: BenchmarkSettings,
                     device: torch.device, step_fn: Callable[[], Any] | None = None) -> TrainResult:
    """Samples/s of full AdamW training steps (forward with targets, loss, backward, step) and peak memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    forward = step_fn or model
    model.train()

    def step() -> None:
        with _autocast(device, settings.precision):
            loss = _loss_of(forward(**inputs))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    timer = _Timer(device)
    with _peak_memory(device) as peak:
        for _ in range(max(1, settings.warmup)):
            step()  # the first step also allocates the AdamW state
        _synchronize(device)
        times = [timer(step) for _ in range(settings.train_repeats)]
    model.eval()
    batch = inputs["images"].shape[0]
    p50 = statistics.median(times)
    return TrainResult(batch_size=batch, step_p50_ms=p50, step_p90_ms=percentile(times, 90),
                       samples_per_s=batch * 1000.0 / p50, peak_memory_mib=peak["mib"])


# --------------------------------------------------------------------------------------------------------------
# Data loading


def workers_needed(train_samples_per_s: float, per_worker_samples_per_s: float) -> int:
    """Data-loader worker processes needed so that loading keeps up with the training rate."""
    if per_worker_samples_per_s <= 0:
        raise LGRNetError(f"--data-rate {per_worker_samples_per_s}: the per-worker rate must be positive")
    return max(1, math.ceil(train_samples_per_s / per_worker_samples_per_s))


def data_pipeline_rate(image_size: int, samples: int = 64, batch_size: int = 16) -> dict[str, float]:
    """Per-worker data-pipeline rate from ``benchmarks/data_pipeline.py`` (the data pipeline benchmark).

    That script times decode + augment + tokenise + collate in one thread, i.e. one DataLoader worker. It lives in
    the source checkout beside ``src/``, so this works from a checkout (editable install), not from a wheel.
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "data_pipeline.py"
    if not path.is_file():
        raise LGRNetError(f"benchmark: {path} not found (data-pipeline rates need a source checkout)")
    spec = importlib.util.spec_from_file_location("lgrnet_data_pipeline_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:  # the script pins one torch thread (a worker's share); give the benchmark its threads back afterwards
        return dict(module.measure(image_size=image_size, samples=samples, batch_size=batch_size))
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------
# Running everything


def environment(device: torch.device) -> dict[str, Any]:
    """Machine and library versions recorded with every result."""
    import timm
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def run_benchmark(config: Config, settings: BenchmarkSettings,
                  progress: Callable[[str], None] | None = None,
                  on_update: Callable[[BenchmarkReport], None] | None = None) -> BenchmarkReport:
    """Build the floor (and the full model), measure everything ``settings`` asks for, return the report.

    ``on_update`` is called with the partial report after every measurement, so that a run cut short by a time
    limit (a GPU lease) still leaves its figures behind.
    """
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LGRNetError("--device cuda but no CUDA device is available")
    if settings.cuda_graphs and device.type != "cuda":
        raise LGRNetError("CUDA graphs need --device cuda")
    if device.type == "cpu" and settings.precision == "fp16":
        raise LGRNetError("fp16 autocast is for GPUs; use --precision bf16 or fp32 on a CPU")
    if not settings.batch_sizes or min(settings.batch_sizes) < 1:
        raise LGRNetError(f"batch sizes must be positive integers, got {settings.batch_sizes}")
    if settings.repeats < 1:
        raise LGRNetError(f"--repeats {settings.repeats}: must be at least 1")
    if settings.warmup < 0:
        raise LGRNetError(f"--warmup {settings.warmup}: must be >= 0")
    if settings.train and settings.train_repeats < 1:
        raise LGRNetError(f"--train-repeats {settings.train_repeats}: must be at least 1")
    if settings.data_rate_per_worker is not None:
        workers_needed(1.0, settings.data_rate_per_worker)  # its check of the rate, before anything is measured
    torch.manual_seed(settings.seed)
    config = benchmark_config(config, settings.image_size)
    # Checked before any model is built; the report records the length used.
    settings = dataclasses.replace(settings, text_length=resolve_text_length(config, settings.text_length))
    report = BenchmarkReport(config_name=config.name, image_size=config.model.image_size, settings=settings,
                             environment=environment(device), models={})

    builders: dict[str, tuple[str, Callable[[], nn.Module]]] = {
        "floor": (f"{config.model.visual.timm_name} + text encoder (no QDA/neck/fusion)",
                  lambda: BackboneFloor(config)),
    }
    if settings.include_full:
        builders["full"] = (f"LGRNet {config.name}", lambda: build_full_model(config))
    models: dict[str, nn.Module] = {}
    for name, (description, build) in builders.items():
        _log(progress, f"building {name} model")
        model = build().eval()
        total, trainable = count_parameters(model)
        result = ModelResult(name=name, description=description, parameters=total, trainable_parameters=trainable)
        if settings.flops:
            _log(progress, f"counting FLOPs of {name}")
            flops, by_module = count_flops(model, make_inputs(config, 1, settings))
            result.gflops, result.gmacs = flops / 1e9, flops / 2e9
            result.flops_by_module = {k: round(v / 1e9, 3) for k, v in by_module.items()}
        report.models[name] = result
        models[name] = model
        _updated(report, on_update)

    # GPU: one model on the device at a time so that each peak-memory figure is that model's own.
    interleave = device.type == "cpu" and len(models) > 1
    for batch in settings.batch_sizes:
        inputs = make_inputs(config, batch, settings, device)
        if interleave:
            _log(progress, f"timing inference (interleaved), batch {batch}")
            for m in models.values():
                m.to(device)
            runners = {n: _compiled(m, None) if settings.compile else m for n, m in models.items()}
            cpu: dict[str, list[float]] = {}
            times = time_inference(runners, inputs, settings, device, interleave=True, cpu_times=cpu)
            mode = "compiled" if settings.compile else "eager"
            for name in models:
                report.models[name].inference.append(_inference_result(batch, times[name], None, mode, cpu[name]))
            if "full" in times:
                pair = [f / b for f, b in zip(times["full"], times["floor"])]
                report.ratios[f"latency_b{batch}_paired_median"] = round(statistics.median(pair), 4)
                report.ratios[f"cpu_time_b{batch}"] = round(
                    statistics.median(cpu["full"]) / statistics.median(cpu["floor"]), 4)
            _updated(report, on_update)
            continue
        for name, model in models.items():
            model.to(device)
            modes = ["compiled" if settings.compile else "eager"]
            if settings.cuda_graphs and batch == 1:
                modes.append("cuda-graphs")
            for mode in modes:
                _log(progress, f"timing inference of {name}, batch {batch}, {mode}")
                runner = _compiled(model, None) if mode == "compiled" else model
                try:
                    result = measure_inference(runner, inputs, settings, device, mode)
                except RuntimeError as exc:  # e.g. a host sync inside the forward breaks graph capture
                    if mode != "cuda-graphs":
                        raise
                    report.notes.append(f"{name}: CUDA graph capture failed: {str(exc).splitlines()[0]}")
                    continue
                report.models[name].inference.append(result)
                _updated(report, on_update)
            model.to("cpu")
            _free(device)

    if settings.train:
        batch = settings.train_batch_size or max(settings.batch_sizes)
        inputs = make_inputs(config, batch, settings, device)
        for name, model in models.items():
            _log(progress, f"timing training steps of {name}, batch {batch}")
            model.to(device)
            step_fn = _compiled(model, None) if settings.compile else None
            report.models[name].train = measure_training(model, inputs, settings, device, step_fn)
            _updated(report, on_update)
            model.to("cpu")
            _free(device)

    report.ratios.update(compute_ratios(report))
    if settings.breakdown and device.type == "cpu":
        _log(progress, "timing the models' parts (forward hooks, process CPU time)")
        inputs = make_inputs(config, settings.batch_sizes[0], settings)
        report.breakdown_ms = {}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        for _ in range(max(1, min(settings.repeats, 5))):  # alternate the models, as for the latencies
            for name, model in models.items():
                names = [n for n in BREAKDOWN_MODULES if n in dict(model.named_modules())]
                rounds[name].append(time_modules(model, inputs, names, repeats=1))
        for name, runs in rounds.items():
            report.breakdown_ms[name] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        _updated(report, on_update)

    trained = [m for m in ("full", "floor") if m in report.models and report.models[m].train]
    if trained:
        rate_per_worker, pipeline = settings.data_rate_per_worker, None
        if rate_per_worker is None and settings.measure_data:
            _log(progress, "measuring the per-worker data-pipeline rate (benchmarks/data_pipeline.py)")
            try:
                pipeline = data_pipeline_rate(config.model.image_size)
                rate_per_worker = pipeline["train_samples_per_s"]
            except (LGRNetError, ImportError, OSError) as exc:  # e.g. no tokenizer files on a bare GPU machine
                report.notes.append(f"data-pipeline rate not measured: {str(exc).splitlines()[0]}")
        if rate_per_worker is not None:
            rate = report.models[trained[0]].train.samples_per_s
            report.data_loading = {
                "model": trained[0],
                "train_samples_per_s": round(rate, 2),
                "per_worker_samples_per_s": round(rate_per_worker, 2),
                "workers_needed": workers_needed(rate, rate_per_worker),
                "pipeline": pipeline,
            }
    if device.type == "cpu":
        report.notes.append(f"CPU: wall time by perf_counter, process CPU time by process_time, "
                            f"{torch.get_num_threads()} torch threads; peak memory is reported for CUDA only.")
    return report


def _updated(report: BenchmarkReport, on_update: Callable[[BenchmarkReport], None] | None) -> None:
    if on_update is not None:
        report.ratios.update(compute_ratios(report))
        on_update(report)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


# --------------------------------------------------------------------------------------------------------------
# Presentation


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


# --------------------------------------------------------------------------------------------------------------
# Fusion checks (issue 7: no graph breaks in the TCA/TCF stack + heads; attention through SDPA)


class FusionPart(nn.Module):
    """The model's fusion part alone: the TCA/TCF stack (``reasoning``) followed by the prediction head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.reasoning = model.reasoning
        self.head = model.head

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        states = self.reasoning(*args, **kwargs)[0]
        return self.head(states)


def capture_fusion_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
    """The exact (args, kwargs) the model passes to its reasoning stack, captured with a forward pre-hook."""
    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["args"] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        captured["kwargs"] = dict(kwargs)

    handle = model.reasoning.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.eval()(**_inference_inputs(inputs))
    finally:
        handle.remove()
    if "args" not in captured:
        raise LGRNetError("benchmark: the model's forward never called model.reasoning")
    return captured["args"], captured["kwargs"]


def fusion_graph_breaks(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``torch._dynamo.explain`` on the fusion part: graph count, graph-break count and the break reasons."""
    import torch._dynamo

    args, kwargs = capture_fusion_inputs(model, inputs)
    fusion = FusionPart(model).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(fusion)(*args, **kwargs)
    reasons = []
    for reason in explained.break_reasons:
        where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in reason.user_stack[-2:])
        reasons.append(f"{reason.reason} at {where}" if where else str(reason.reason))
    return {"graph_count": explained.graph_count, "graph_break_count": explained.graph_break_count,
            "break_reasons": reasons}


def fusion_attention_ops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Counts, from a profiler trace of the fusion part, the SDPA calls and explicit softmax ops.

    With SDPA, each TCA/TCF layer runs two ``aten::scaled_dot_product_attention`` and no standalone softmax (an
    explicit ``softmax(QK^T)V`` path shows up as ``aten::softmax`` / ``aten::_softmax``).
    """
    from torch.profiler import ProfilerActivity, profile

    args, kwargs = capture_fusion_inputs(model, inputs)
    fusion = FusionPart(model).eval()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fusion(*args, **kwargs)
    counts = {"sdpa": 0, "softmax": 0, "layers": len(model.reasoning.layers)}
    for event in prof.events():
        if event.name == "aten::scaled_dot_product_attention":
            counts["sdpa"] += 1
        elif event.name == "aten::softmax":
            counts["softmax"] += 1
    return counts


def host_sync_ops(model: nn.Module, inputs: dict[str, torch.Tensor], graph_safe: bool = True) -> dict[str, int]:
    """Ops in one inference forward that read a tensor on the host (a GPU sync; forbidden in CUDA graph capture).

    Counted from a CPU profiler trace; ``graph_safe`` applies the same shim as the CUDA-graph timing.
    """
    from torch.profiler import ProfilerActivity, profile

    kwargs = _inference_inputs(inputs)
    shim = _without_mask_skip_checks() if graph_safe else contextlib.nullcontext()
    with torch.inference_mode(), shim, profile(activities=[ProfilerActivity.CPU]) as prof:
        model.eval()(**kwargs)
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------------------
# Where the time goes (CPU profiling aid)


#: Parts timed by ``--breakdown``, those that exist in the model: LGRNet's, then the floor's (timm names).
BREAKDOWN_MODULES = [
    "text", "visual", "visual.patch_embed", *(f"visual.layers.{i}" for i in range(4)), "visual.backbone.patch_embed", *(f"visual.backbone.layers.{i}" for i in range(4)),
    *(f"visual.stage_qda.{i}" for i in range(4)), *(f"visual.backbone.norm{i}" for i in range(4)), "visual.neck",
    *(f"visual.neck.laterals.{i}" for i in range(4)),
    # Each bottom-up step's QDA gates and 2x2-pools its level in one call (stride 4, 8, 16).
    *(f"visual.neck.down_qda.{i}" for i in range(3)),
    "visual_proj", "tfe.text_proj", "tfe.coordinate_head", "reasoning", "head",
]


def time_modules(model: nn.Module, inputs: dict[str, torch.Tensor], names: list[str], repeats: int = 3
                 ) -> dict[str, float]:
    """Median inclusive time (ms) per forward of the named submodules (CPU; forward hooks).

    Time is this process's CPU time (``time.process_time``), which other jobs on a shared machine do not inflate;
    with one torch thread it equals the compute time. A module called several times per forward has its calls
    summed; modules that did not run are left out.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise LGRNetError(f"benchmark: no submodule named {', '.join(missing)}")
    totals: dict[str, float] = {}
    called: set[str] = set()
    starts: dict[str, list[float]] = {n: [] for n in names}
    handles = []
    for name in names:
        def pre(_m, _a, name=name):
            starts[name].append(time.process_time())

        def post(_m, _a, _o, name=name):
            totals[name] = totals.get(name, 0.0) + time.process_time() - starts[name].pop()
            called.add(name)

        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    runs: dict[str, list[float]] = {n: [] for n in ["total", *names]}
    run = _inference_fn(model.eval(), inputs, torch.device("cpu"), "fp32")
    try:
        run()  # warm-up
        for _ in range(repeats):
            totals.clear()
            start = time.process_time()
            run()
            runs["total"].append(time.process_time() - start)
            for n in names:
                runs[n].append(totals.get(n, 0.0))
    finally:
        for h in handles:
            h.remove()
    # Modules never entered through __call__ (e.g. a timm model run by ``forward_features``) are left out.
    return {n: round(statistics.median(v) * 1000.0, 2) for n, v in runs.items() if n == "total" or n in called}


# --------------------------------------------------------------------------------------------------------------
# Issue-7 GPU targets, checked on the JSON reports of benchmarks/gpu_benchmark.sh


def _find(report: dict[str, Any] | None, model: str, batch: int, mode: str) -> dict[str, Any] | None:
    if not report or model not in report.get("models", {}):
        return None
    return next((r for r in report["models"][model]["inference"] if r["batch_size"] == batch and r["mode"] == mode),
                None)


def gpu_targets(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's GPU targets from the reports ``{"eager": ..., "compiled": ..., "latency": ...}`` (JSON dicts).

    Each row: target, measured value, limit, ``passed`` (None where the figure is missing).
    """
    rows: list[dict[str, Any]] = []

    def row(target: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        passed = None if value is None else (value >= limit if higher_is_better else value < limit)
        rows.append({"target": target, "value": None if value is None else round(value, 4), "limit": limit,
                     "passed": passed})

    compiled = reports.get("compiled")
    full, floor = _find(compiled, "full", 32, "compiled"), _find(compiled, "floor", 32, "compiled")
    row("inference b32 bf16 compiled: full / floor images/s", full["images_per_s"] / floor["images_per_s"]
        if full and floor else None, 0.9, True)
    latencies = [r["latency_p50_ms"] for key in ("latency", "compiled", "eager")
                 for mode in ("cuda-graphs", "compiled", "eager") if (r := _find(reports.get(key), "full", 1, mode))]
    row("batch-1 latency of the full model, best mode (ms)", min(latencies) if latencies else None, 10.0, False)
    eager = reports.get("eager") or {}
    models = eager.get("models", {})
    train_full = (models.get("full") or {}).get("train")
    train_floor = (models.get("floor") or {}).get("train")
    row("training b32 bf16: full / floor samples/s", train_full["samples_per_s"] / train_floor["samples_per_s"]
        if train_full and train_floor else None, 0.9, True)
    peak = train_full["peak_memory_mib"] / 1024 if train_full and train_full.get("peak_memory_mib") else None
    row("training b32 bf16: full model peak memory (GiB)", peak, 40.0, False)
    return rows


def format_targets(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        verdict = "not measured" if r["passed"] is None else ("PASS" if r["passed"] else "MISS")
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"{verdict:>12}  {r['target']}: {value} (limit {r['limit']})")
    return "\n".join(lines)
