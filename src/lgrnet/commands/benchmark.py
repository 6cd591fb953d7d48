"""``lgrnet benchmark``: parameters, FLOPs, latency, throughput, memory and training rate of a preset, measured
against its backbone floor in the same run (see :mod:`lgrnet.benchmark` and docs/performance.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lgrnet.commands.options import add_precision_argument
from lgrnet.errors import LGRNetError


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="measure speed, FLOPs and memory against the backbone floor",
                              description=__doc__)
    p.add_argument("--preset", default="lgrnet-swin-s", help="preset name (default: %(default)s)")
    p.add_argument("--config", help="YAML config file (overrides --preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. model.num_layers=3 (repeatable)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-sizes", type=_positive_ints, default=[1], help="comma-separated, e.g. 1,32")
    add_precision_argument(p, help="fp32, or bf16/fp16 autocast", old_dtype_name=False)
    p.add_argument("--compile", action="store_true", help="torch.compile both models (default mode)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time batch 1 replaying a CUDA graph of the eager forward (GPU)")
    p.add_argument("--train", action="store_true", help="also time AdamW training steps")
    p.add_argument("--train-batch-size", type=int, help="training batch (default: largest --batch-sizes)")
    p.add_argument("--image-size", type=int, help="square input size (default: the config's model.image_size)")
    p.add_argument("--text-length", type=int,
                   help="tokens per expression, padding included (default: the config's model.text.max_length)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=20, help="timed inference calls (default: %(default)s)")
    p.add_argument("--train-repeats", type=int, default=10, help="timed training steps (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--floor-only", action="store_true", help="measure only the backbone floor")
    p.add_argument("--data-rate", type=float,
                   help="samples/s of one data-loader worker, to report the workers needed to feed training")
    p.add_argument("--measure-data", action="store_true",
                   help="measure that rate here (the data pipeline in one thread) when --train")
    p.add_argument("--data-images", type=Path, metavar="DIR",
                   help="JPEGs (*.jpg) that --measure-data decodes (default: synthetic COCO-sized JPEGs)")
    p.add_argument("--breakdown", action="store_true",
                   help="CPU: also time the full model's parts (text, backbone stages, QDA, neck, fusion, head)")
    p.add_argument("--json", type=Path, help="write the full report as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lgrnet.benchmark import BenchmarkSettings, run_benchmark
    from lgrnet.config import load_config

    if args.image_size is not None and (args.image_size <= 0 or args.image_size % 64):
        raise LGRNetError(f"--image-size {args.image_size}: must be a positive multiple of 64")
    if args.train_batch_size is not None and args.train_batch_size < 1:
        raise LGRNetError(f"--train-batch-size {args.train_batch_size}: must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise LGRNetError(f"--threads {args.threads}: must be positive")
        import torch

        torch.set_num_threads(args.threads)
    if args.json is not None:
        from lgrnet.output_paths import check_output_file

        check_output_file(args.json, "--json")
    config = load_config(args.config or args.preset, args.overrides)
    settings = BenchmarkSettings(
        device=args.device, batch_sizes=args.batch_sizes, precision=args.precision, compile=args.compile,
        cuda_graphs=args.cuda_graphs, train=args.train, train_batch_size=args.train_batch_size,
        image_size=args.image_size, text_length=args.text_length, warmup=args.warmup, repeats=args.repeats,
        train_repeats=args.train_repeats,
        flops=not args.no_flops, include_full=not args.floor_only, data_rate_per_worker=args.data_rate,
        measure_data=args.measure_data, breakdown=args.breakdown,
        data_images=None if args.data_images is None else str(args.data_images),
    )

    def save(report) -> None:  # after every measurement: a run stopped by a time limit keeps its figures
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(args.json.name + ".partial")
        partial.write_text(report.to_json())
        partial.replace(args.json)

    report = run_benchmark(config, settings, progress=lambda msg: print(f"[benchmark] {msg}", flush=True),
                           on_update=save if args.json is not None else None)
    print(report.table())
    if args.json is not None:
        save(report)
        print(f"wrote {args.json}")
    return 0
