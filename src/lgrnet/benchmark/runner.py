"""The run behind ``lgrnet benchmark``: builds the backbone floor (and the full model), measures everything the
settings ask for, and returns the :class:`~lgrnet.benchmark.report.BenchmarkReport`.

On a CPU the two models are timed alternately (floor, full, floor, full, ...) so that load from other processes
hits both alike; the per-pair ratio's median is reported besides the ratio of medians. On a GPU one model is on the
device at a time, so that each peak-memory figure is that model's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lgrnet.benchmark.data_rate import data_pipeline_rate, image_files, workers_needed
from lgrnet.benchmark.flops import count_flops
from lgrnet.benchmark.measure import (
    BREAKDOWN_MODULES,
    compiled,
    inference_result,
    measure_inference,
    measure_training,
    time_inference,
    time_modules,
)
from lgrnet.benchmark.models import (
    benchmark_config,
    count_parameters,
    make_inputs,
    model_builders,
    resolve_text_length,
)
from lgrnet.benchmark.report import BenchmarkReport, BenchmarkSettings, ModelResult, compute_ratios
from lgrnet.config import Config
from lgrnet.errors import LGRNetError
from lgrnet.precision import autocast_dtype, normalize_precision


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
    settings = _checked(settings, device)
    torch.manual_seed(settings.seed)
    config = benchmark_config(config, settings.image_size)
    # Checked before any model is built; the report records the length used.
    settings = dataclasses.replace(settings, text_length=resolve_text_length(config, settings.text_length))
    report = BenchmarkReport(config_name=config.name, image_size=config.model.image_size, settings=settings,
                             environment=environment(device), models={})
    models = _build_models(config, settings, report, progress, on_update)
    for batch in settings.batch_sizes:
        inputs = make_inputs(config, batch, settings, device)
        if device.type == "cpu" and len(models) > 1:
            _time_inference_interleaved(models, inputs, settings, device, report, progress, on_update)
        else:  # one model on the device at a time so that each peak-memory figure is that model's own
            _time_inference_in_turn(models, inputs, settings, device, report, progress, on_update)
    if settings.train:
        _time_training(config, models, settings, device, report, progress, on_update)
    report.ratios.update(compute_ratios(report))
    if settings.breakdown and device.type == "cpu":
        _time_parts(config, models, settings, report, progress, on_update)
    _data_loading(config, settings, report, progress)
    if device.type == "cpu":
        report.notes.append(f"CPU: wall time by perf_counter, process CPU time by process_time, "
                            f"{torch.get_num_threads()} torch threads; peak memory is reported for CUDA only.")
    return report


def _checked(settings: BenchmarkSettings, device: torch.device) -> BenchmarkSettings:
    """The settings with their precision's canonical name, once every value is checked (one-line errors)."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LGRNetError("--device cuda but no CUDA device is available")
    if settings.cuda_graphs and device.type != "cuda":
        raise LGRNetError("CUDA graphs need --device cuda")
    precision = normalize_precision(settings.precision, "--precision")
    autocast_dtype(precision, device, "--precision")  # refuses fp16 on a CPU
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
    elif settings.measure_data and settings.data_images is not None:
        image_files(settings.data_images)
    return dataclasses.replace(settings, precision=precision)


def _build_models(config: Config, settings: BenchmarkSettings, report: BenchmarkReport,
                  progress: Callable[[str], None] | None,
                  on_update: Callable[[BenchmarkReport], None] | None) -> dict[str, nn.Module]:
    """The floor and (unless ``include_full`` is off) the full model, with their parameters and FLOPs reported."""
    models: dict[str, nn.Module] = {}
    for name, (description, build) in model_builders(config, settings.include_full).items():
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
    return models


def _time_inference_interleaved(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor],
                                settings: BenchmarkSettings, device: torch.device, report: BenchmarkReport,
                                progress: Callable[[str], None] | None,
                                on_update: Callable[[BenchmarkReport], None] | None) -> None:
    """CPU: the models called alternately, and the median of the per-pair latency ratios."""
    batch = inputs["images"].shape[0]
    _log(progress, f"timing inference (interleaved), batch {batch}")
    for m in models.values():
        m.to(device)
    runners = {n: compiled(m) if settings.compile else m for n, m in models.items()}
    cpu: dict[str, list[float]] = {}
    times = time_inference(runners, inputs, settings, device, interleave=True, cpu_times=cpu)
    mode = "compiled" if settings.compile else "eager"
    for name in models:
        report.models[name].inference.append(inference_result(batch, times[name], None, mode, cpu[name]))
    if "full" in times:
        pair = [f / b for f, b in zip(times["full"], times["floor"])]
        report.ratios[f"latency_b{batch}_paired_median"] = round(statistics.median(pair), 4)
        report.ratios[f"cpu_time_b{batch}"] = round(
            statistics.median(cpu["full"]) / statistics.median(cpu["floor"]), 4)
    _updated(report, on_update)


def _time_inference_in_turn(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor],
                            settings: BenchmarkSettings, device: torch.device, report: BenchmarkReport,
                            progress: Callable[[str], None] | None,
                            on_update: Callable[[BenchmarkReport], None] | None) -> None:
    """Each model on the device in turn, in each mode asked for (eager or compiled, and a CUDA graph at batch 1)."""
    batch = inputs["images"].shape[0]
    for name, model in models.items():
        model.to(device)
        modes = ["compiled" if settings.compile else "eager"]
        if settings.cuda_graphs and batch == 1:
            modes.append("cuda-graphs")
        for mode in modes:
            _log(progress, f"timing inference of {name}, batch {batch}, {mode}")
            runner = compiled(model) if mode == "compiled" else model
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


def _time_training(config: Config, models: dict[str, nn.Module], settings: BenchmarkSettings,
                   device: torch.device, report: BenchmarkReport, progress: Callable[[str], None] | None,
                   on_update: Callable[[BenchmarkReport], None] | None) -> None:
    batch = settings.train_batch_size or max(settings.batch_sizes)
    inputs = make_inputs(config, batch, settings, device)
    for name, model in models.items():
        _log(progress, f"timing training steps of {name}, batch {batch}")
        model.to(device)
        step_fn = compiled(model) if settings.compile else None
        report.models[name].train = measure_training(model, inputs, settings, device, step_fn)
        _updated(report, on_update)
        model.to("cpu")
        _free(device)


def _time_parts(config: Config, models: dict[str, nn.Module], settings: BenchmarkSettings,
                report: BenchmarkReport, progress: Callable[[str], None] | None,
                on_update: Callable[[BenchmarkReport], None] | None) -> None:
    """``--breakdown``: the median inclusive CPU time of each model's parts, the models alternated."""
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


def _data_loading(config: Config, settings: BenchmarkSettings, report: BenchmarkReport,
                  progress: Callable[[str], None] | None) -> None:
    """The data-loader workers the first timed training rate needs, at the given or measured per-worker rate."""
    trained = [m for m in ("full", "floor") if m in report.models and report.models[m].train]
    if not trained:
        return
    rate_per_worker, pipeline = settings.data_rate_per_worker, None
    if rate_per_worker is None and settings.measure_data:
        _log(progress, "measuring the per-worker data-pipeline rate (one thread)")
        try:
            pipeline = data_pipeline_rate(config.model.image_size, images=settings.data_images)
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


def _updated(report: BenchmarkReport, on_update: Callable[[BenchmarkReport], None] | None) -> None:
    if on_update is not None:
        report.ratios.update(compute_ratios(report))
        on_update(report)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
