"""Timing and memory: inference latency (eager, ``torch.compile`` or a replayed CUDA graph), AdamW training steps,
peak GPU memory, and the time a model's parts take on a CPU (``--breakdown``).

GPU calls are timed with CUDA events (no host sync inside the measured region), CPU calls with ``perf_counter`` and
the process CPU time, which other jobs on a shared machine do not inflate.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lgrnet.benchmark.models import inference_inputs, loss_of
from lgrnet.benchmark.report import BenchmarkSettings, InferenceResult, Precision, TrainResult
from lgrnet.errors import LGRNetError
from lgrnet.precision import autocast, autocast_dtype


def synchronize(device: torch.device) -> None:
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
    kwargs = inference_inputs(inputs)

    def run() -> Any:
        with torch.inference_mode(), autocast(device, precision):
            return model(**kwargs)

    return run


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile`` in its default mode. dynamic=False: the benchmark's shapes are fixed; every batch size
    gets its own specialised graph."""
    return torch.compile(model, dynamic=False)  # type: ignore[return-value]


def _cuda_graph_fn(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                   precision: Precision, warmup: int) -> Callable[[], Any]:
    """One inference forward captured in a CUDA graph (static inputs); the returned function replays it.

    Warm-up runs on a side stream first, as graph capture requires; autocast's weight-cast cache is off during
    capture so that the casts are part of the graph.
    """
    kwargs = inference_inputs(inputs)
    dtype = autocast_dtype(precision, device)

    def forward() -> Any:
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if dtype is not None:
                stack.enter_context(torch.autocast("cuda", dtype=dtype, cache_enabled=False))
            return model(**kwargs)

    graph = torch.cuda.CUDAGraph()
    with without_mask_skip_checks():
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
def without_mask_skip_checks() -> Iterator[None]:
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
            synchronize(device)
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
    return inference_result(batch, times, peak["mib"], mode, cpu.get("m"))


def inference_result(batch: int, times: list[float], peak_mib: float | None, mode: str,
                     cpu_ms: list[float] | None = None) -> InferenceResult:
    """The result of per-call latencies ``times`` (ms) at batch ``batch``."""
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
        with autocast(device, settings.precision):
            loss = loss_of(forward(**inputs))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    timer = _Timer(device)
    with _peak_memory(device) as peak:
        for _ in range(max(1, settings.warmup)):
            step()  # the first step also allocates the AdamW state
        synchronize(device)
        times = [timer(step) for _ in range(settings.train_repeats)]
    model.eval()
    batch = inputs["images"].shape[0]
    p50 = statistics.median(times)
    return TrainResult(batch_size=batch, step_p50_ms=p50, step_p90_ms=percentile(times, 90),
                       samples_per_s=batch * 1000.0 / p50, peak_memory_mib=peak["mib"])


#: Parts timed by ``--breakdown``, those that exist in the model: LGRNet's, then the floor's (timm names).
BREAKDOWN_MODULES = [
    "text", "visual", "visual.patch_embed", *(f"visual.layers.{i}" for i in range(4)),
    "visual.backbone.patch_embed", *(f"visual.backbone.layers.{i}" for i in range(4)),
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
