"""``lgrnet synth``: generate the SynthRef benchmark, or SynthRef-G with ``--grec`` (images + JSONL in the
custom-data format)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the SynthRef synthetic referring-expression benchmark",
        description="Generate SynthRef: images plus train/val/testA/testB JSONL files (custom-data format). "
        "testA holds expressions with the paper's spatial words, testB the rest. Deterministic for a seed. "
        "With --grec, SynthRef-G: single-, multi- (2-4 objects) and no-target expressions, lines with 'boxes'.",
    )
    p.add_argument("--out", required=True, help="output folder (a SynthRef folder there is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=20000, help="training expressions (default 20000)")
    p.add_argument("--num-val", type=int, default=1000, help="validation expressions (default 1000)")
    p.add_argument("--num-test", type=int, default=1000, help="expressions in EACH of testA and testB (default 1000)")
    p.add_argument("--per-image", type=int, default=3, help="expressions per image (default 3)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image format (default jpg, quality 92)")
    p.add_argument("--grec", action="store_true",
                   help="generate SynthRef-G (single-, multi- and no-target expressions) instead of SynthRef")
    p.add_argument("--grec-shares", default=None, metavar="S,M,N",
                   help="with --grec: shares of single-, multi- and no-target expressions, summing to 1 "
                   "(default 0.5,0.3,0.2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from lgrnet.errors import LGRNetError
    from lgrnet.output_paths import check_output_dir
    from lgrnet.synth.generate import DEFAULT_GREC_SHARES, generate

    if args.workers is not None and args.workers < 1:
        raise LGRNetError(f"--workers must be >= 1, got {args.workers}")
    shares = DEFAULT_GREC_SHARES
    if args.grec_shares is not None:
        if not args.grec:
            raise LGRNetError("--grec-shares needs --grec")
        try:
            shares = tuple(float(v) for v in args.grec_shares.split(","))
        except ValueError:
            raise LGRNetError(f"--grec-shares: expected three numbers S,M,N, got {args.grec_shares!r}") from None
    check_output_dir(args.out, "--out")
    start = time.perf_counter()
    meta = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                    num_test=args.num_test, per_image=args.per_image, workers=args.workers,
                    image_format=args.format, progress=not args.quiet, grec=args.grec, grec_shares=shares)
    seconds = time.perf_counter() - start
    total = sum(meta["counts"].values())
    name = "SynthRef-G" if args.grec else "SynthRef"
    print(f"{name} (seed {args.seed}) written to {args.out} in {seconds:.1f} s "
          f"({total / max(seconds, 1e-9):.0f} expressions/s)")
    for split, n in meta["counts"].items():
        kinds = ""
        if args.grec:
            kinds = "  (" + ", ".join(f"{k} {v}" for k, v in meta["kinds"][split].items()) + ")"
        print(f"  {split:6s} {n:7d} expressions on {meta['images'][split]:6d} images  -> {args.out}/{split}.jsonl"
              f"{kinds}")
    return 0
