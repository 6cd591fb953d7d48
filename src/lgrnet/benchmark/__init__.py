"""Speed, FLOPs and memory of LGR-NET measured against its own backbone floor.

Almost all of LGR-NET's cost is its two backbones (paper Sec. IV-D: 274.18M parameters, 79.87 GFLOPs): Swin-S (or
ResNet-101) at 640x640 and BERT-base at 40 tokens. Whatever the query-dynamic attention, the neck and the TCA/TCF
fusion add is overhead on top of that *floor*. The benchmark builds both the full model and a :class:`BackboneFloor`
(the preset's timm backbone and text encoder, nothing else) with random weights, and measures them in the same run:

* parameters and FLOPs (:mod:`~lgrnet.benchmark.flops`; one multiply-add = 2 FLOPs, GMACs = GFLOPs/2),
* inference latency p50/p90 and images/s per batch size, peak GPU memory, and training samples/s of a full AdamW
  step (:mod:`~lgrnet.benchmark.measure`; optional bf16/fp16 autocast, ``torch.compile`` and CUDA graphs),
* ratios full / floor (:mod:`~lgrnet.benchmark.report`), and the number of data-loader workers needed to feed the
  measured training rate (:mod:`~lgrnet.benchmark.data_rate`).

:func:`run_benchmark` (:mod:`~lgrnet.benchmark.runner`) does all of it; ``lgrnet benchmark`` calls it.
"""

from lgrnet.benchmark.data_rate import data_pipeline_rate, workers_needed
from lgrnet.benchmark.flops import count_flops
from lgrnet.benchmark.measure import (
    measure_inference,
    measure_training,
    percentile,
    time_inference,
    time_modules,
)
from lgrnet.benchmark.models import (
    BackboneFloor,
    benchmark_config,
    build_full_model,
    count_parameters,
    make_inputs,
    resolve_text_length,
)
from lgrnet.benchmark.report import (
    BenchmarkReport,
    BenchmarkSettings,
    InferenceResult,
    ModelResult,
    TrainResult,
    compute_ratios,
    format_table,
)
from lgrnet.benchmark.runner import run_benchmark

__all__ = [
    "BackboneFloor", "BenchmarkReport", "BenchmarkSettings", "InferenceResult", "ModelResult", "TrainResult",
    "benchmark_config", "build_full_model", "compute_ratios", "count_flops", "count_parameters",
    "data_pipeline_rate", "format_table", "make_inputs", "measure_inference", "measure_training", "percentile",
    "resolve_text_length", "run_benchmark", "time_inference", "time_modules", "workers_needed",
]
