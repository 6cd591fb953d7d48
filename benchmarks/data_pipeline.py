"""Data-pipeline throughput of ONE data-loader worker: decode + augment + tokenise + collate, samples/s.

Prints the figures of :func:`lgrnet.benchmark.data_rate.data_pipeline_rate` (one torch thread, the share of each
DataLoader worker) as a table: the rate from the wall clock and from this process's CPU time, which is what a
worker with a core of its own achieves when other processes load the machine.

    python benchmarks/data_pipeline.py                      # 640, real_smoke JPEGs (COCO), batch 16
    python benchmarks/data_pipeline.py --image-size 512 --samples 64 --images synthetic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lgrnet.benchmark.data_rate import data_pipeline_rate

REAL_SMOKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_smoke" / "images"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", choices=["real", "synthetic"], default="real",
                        help="the real_smoke COCO JPEGs beside the checkout (synthetic ones if absent) or synthetic")
    args = parser.parse_args(argv)
    real = args.images == "real" and REAL_SMOKE.is_dir()
    r = data_pipeline_rate(args.image_size, args.samples, args.batch_size, images=REAL_SMOKE if real else None)
    print(f"data pipeline, one worker (1 torch thread), S={args.image_size}, batch {args.batch_size}, "
          f"{args.samples} samples, {args.images} images")
    print("| pipeline | samples/s per worker (wall) | per CPU second | ms/sample (decode+augment+tokenise) "
          "| collate ms/sample |")
    print("|---|---:|---:|---:|---:|")
    for name in ("train", "eval"):
        print(f"| {name} | {r[f'{name}_samples_per_s']:.1f} | {r[f'{name}_cpu_samples_per_s']:.1f} "
              f"| {r[f'{name}_ms_per_sample']:.1f} | {r[f'{name}_collate_ms_per_sample']:.2f} |")
    print(f"JPEG decode alone: {r['decode_ms']:.1f} ms/image (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
