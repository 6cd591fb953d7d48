"""ONNX export of the full ``lgrnet-swin-s`` (random weights, its own 640 canvas and text length) and its CPU
latency in onnxruntime against PyTorch's, in the same process (docs/performance.md, "ONNX").

The model is exported with ``lgrnet.inference.onnx.export_onnx`` (the code behind ``lgrnet export onnx``), then
both backends run the same batch, alternating call by call, with the same number of threads (PyTorch's
``set_num_threads`` and onnxruntime's ``intra_op_num_threads``), under ``torch.inference_mode``. Prints the export
time, the graph's size, the outputs' largest difference, the median wall and process-CPU time per forward of each
backend and the ratio onnxruntime / PyTorch (below 1: onnxruntime is faster).
Usage: ``.venv/bin/python benchmarks/onnx_latency.py [--calls N] [--threads T] [--batch B] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lgrnet.benchmark import BenchmarkSettings, benchmark_config, make_inputs
from lgrnet.inference.onnx import INPUT_NAMES, export_onnx, load_onnx
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.text import build_tokenizer


def timed(call) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lgrnet-swin-s")
    parser.add_argument("--calls", type=int, default=10, help="timed forwards per backend")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", help="folder for the graph (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = benchmark_config(args.preset)
    torch.manual_seed(0)
    model = LGRNet(config.model, config.loss).eval()
    settings = BenchmarkSettings(batch_sizes=[args.batch])
    inputs = make_inputs(config, args.batch, settings)
    batch = tuple(inputs[name] for name in INPUT_NAMES)
    print(f"{args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, canvas "
          f"{config.model.image_size}, text length {batch[2].shape[1]}, batch {args.batch}, {args.threads} thread(s)")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.out or scratch)
        start = time.perf_counter()
        written = export_onnx(model, config, folder / "model.onnx", tokenizer=build_tokenizer(config.model.text))
        print(f"export: {time.perf_counter() - start:.0f} s, opset {written.opset}, "
              f"{written.onnx_path.stat().st_size / 2**20:.0f} MiB, largest difference on the export's sample batch "
              f"{written.max_abs_diff:.2g}")

        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        graph = load_onnx(written.onnx_path, session_options=options).model

        with torch.inference_mode():
            expected = model(*batch)
            got = graph(*batch)
            difference = max(float((got.pred_boxes - expected.pred_boxes).abs().max()),
                             float((got.coord - expected.coord).abs().max()))
            print(f"outputs on the benchmark batch: largest difference {difference:.2g} (normalised canvas units)")
            for _ in range(2):  # warm-up
                model(*batch)
                graph(*batch)
            times: dict[str, list[tuple[float, float]]] = {"pytorch": [], "onnxruntime": []}
            for _ in range(args.calls):  # alternated, so that load from other jobs falls on both alike
                times["pytorch"].append(timed(lambda: model(*batch)))
                times["onnxruntime"].append(timed(lambda: graph(*batch)))

    medians = {name: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
               for name, runs in times.items()}
    for name, (wall, cpu) in medians.items():
        print(f"{name:12s} median wall {wall * 1000:8.1f} ms   median process CPU {cpu * 1000:8.1f} ms   "
              f"(min wall {min(t[0] for t in times[name]) * 1000:.1f} ms, {args.calls} calls)")
    wall_ratio = medians["onnxruntime"][0] / medians["pytorch"][0]
    cpu_ratio = medians["onnxruntime"][1] / medians["pytorch"][1]
    print(f"onnxruntime / pytorch: {wall_ratio:.2f} (wall), {cpu_ratio:.2f} (process CPU)")


if __name__ == "__main__":
    main()
