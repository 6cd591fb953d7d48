"""``lgrnet synth``: generate the SynthRef benchmark (images + JSONL in the custom-data format)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the SynthRef synthetic referring-expression benchmark",
        description="Generate SynthRef: images plus train/val/testA/testB JSONL files (custom-data format). "
        "testA holds expressions with the paper's spatial words, testB the rest. Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, help="output folder (a SynthRef folder there is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=20000, help="training expressions (default 20000)")
    p.add_argument("--num-val", type=int, default=1000, help="validation expressions (default 1000)")
    p.add_argument("--num-test", type=int, default=1000, help="expressions in EACH of testA and testB (default 1000)")
    p.add_argument("--per-image", type=int, default=3, help="expressions per image (default 3)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image format (default jpg, quality 92)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from lgrnet.errors import LGRNetError
    from lgrnet.output_paths import check_output_dir
    from lgrnet.synth.generate import generate

    if args.workers is not None and args.workers < 1:
        raise LGRNetError(f"--workers must be >= 1, got {args.workers}")
    check_output_dir(args.out, "--out")
    start = time.perf_counter()
    meta = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                    num_test=args.num_test, per_image=args.per_image, workers=args.workers,
                    image_format=args.format, progress=not args.quiet)
    seconds = time.perf_counter() - start
    total = sum(meta["counts"].values())
    print(f"SynthRef (seed {args.seed}) written to {args.out} in {seconds:.1f} s "
          f"({total / max(seconds, 1e-9):.0f} expressions/s)")
    for split, n in meta["counts"].items():
        print(f"  {split:6s} {n:7d} expressions on {meta['images'][split]:6d} images  -> {args.out}/{split}.jsonl")
    return 0
