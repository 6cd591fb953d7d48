"""``lgrnet quickstart``: generate a cached SynthRef set, evaluate the shipped SynthRef model on val/testA/testB,
fine-tune it for a short wall-clock budget, evaluate again, and write ``DIR/model/``, ``DIR/metrics.json`` and
``DIR/predictions.png``. Without shipped weights in the package (or with --from-scratch) a fresh lgrnet-tiny is
trained for the budget instead, and the output says so.

Generalized REC: the shipped SynthRef-G model (synthref-g: zero, one or many boxes with a score each) is evaluated
on a small cached SynthRef-G val set (Precision@(F1=1, IoU>=0.5), N-acc, single-target Acc@0.5; metrics.json's
"grec") and DIR/grec_predictions.png draws it on no-target, multi-target and single-target examples. Without that
model in the package the output says so and this part is skipped.

    lgrnet quickstart                                # runs/quickstart, 2 min fine-tune of the shipped model
    lgrnet quickstart --train-minutes 0              # evaluate the shipped model only
    lgrnet quickstart --from-scratch --minutes 10    # a fresh model, 10 min
    lgrnet quickstart --grec-num-eval 0              # without the generalized-REC part
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="SynthRef: evaluate the shipped model, fine-tune briefly, report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--train-minutes", type=float, default=2.0,
                   help="wall-clock training budget in minutes (default 2; 0 = evaluate only)")
    p.add_argument("--minutes", type=float, default=None,
                   help="same as --train-minutes (the budget of --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train a fresh model (--config) instead of fine-tuning the shipped one")
    p.add_argument("--num-eval", type=int, default=100, help="expressions in each of val/testA/testB (default 100)")
    p.add_argument("--num-train", type=int, default=3000, help="SynthRef train expressions (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="SynthRef and training seed (default 0)")
    p.add_argument("--checkpoint", "--weights", dest="checkpoint", default=None,
                   help="start model: a model folder or a shipped model name (default: synthref, the package's "
                        "weights/synthref-small, or $LGRNET_SHIPPED_MODEL)")
    p.add_argument("--config", default="lgrnet-tiny",
                   help="preset or YAML of the from-scratch model (default lgrnet-tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the model's)")
    p.add_argument("--max-steps", type=int, default=0, help="also stop after this many steps (default: no limit)")
    p.add_argument("--examples", type=int, default=8, help="predictions drawn in predictions.png (default 8)")
    p.add_argument("--grec-checkpoint", default=None,
                   help="the model with the generalized head evaluated on SynthRef-G: a model folder or a shipped "
                        "model name (default: synthref-g, the package's weights/synthref-g-small, or "
                        "$LGRNET_SHIPPED_GREC_MODEL; skipped, said plainly, when the package has none)")
    p.add_argument("--grec-num-eval", type=int, default=60,
                   help="SynthRef-G val expressions for the generalized model (default 60; 0 skips that part)")
    p.add_argument("--cache-dir", default=None,
                   help="where the SynthRef set is cached (default $LGRNET_CACHE or ~/.cache/lgrnet)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 was faster on a busy shared 2-core machine, "
                        "docs/synthref.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lgrnet.quickstart import QuickstartOptions, run_quickstart

    if args.threads is not None:
        if args.threads < 1:
            from lgrnet.errors import LGRNetError

            raise LGRNetError(f"--threads {args.threads}: must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    minutes = args.minutes if args.minutes is not None else args.train_minutes
    options = QuickstartOptions(
        output_dir=Path(args.output_dir), train_minutes=minutes, from_scratch=args.from_scratch,
        num_eval=args.num_eval, num_train=args.num_train, seed=args.seed,
        checkpoint=args.checkpoint, config=args.config, overrides=args.overrides,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None, batch_size=args.batch_size,
        max_steps=args.max_steps, num_examples=args.examples, device=args.device,
        grec_checkpoint=args.grec_checkpoint, num_grec=args.grec_num_eval)
    run_quickstart(options, say=lambda line: print(line, flush=True))
    return 0
