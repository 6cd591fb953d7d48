"""``lgrnet eval``: evaluate a checkpoint and print one JSON object of metrics (Acc@0.5, Acc@0.75, mIoU,
spatial / non-spatial Acc@0.5; ``orig_*`` in original-image pixels).

    lgrnet eval --checkpoint synthref --data synth:data/synthref --split testA
    lgrnet eval --checkpoint runs/custom --data data/custom/test.jsonl --output preds.jsonl
    lgrnet eval --checkpoint runs/grec --data synth:data/synthref-g --sweep --save-threshold
    lgrnet eval --checkpoint runs/grec --data synth:data/synthref-g --sweep --min-n-acc 90 --save-threshold

A model with the generalized REC head (zero, one or many boxes with a score each) is also measured as GREC, in
original-image pixels at its score threshold (model.grec.threshold): grec_precision is Precision@(F1=1, IoU>=0.5)
over all expressions, grec_n_acc the share of no-target expressions answered with no box, grec_t_acc the share of
target expressions answered with at least one, grec_single_acc50 the top box's Acc@0.5 on single-target
expressions; grec_best_threshold is the threshold of 0.05, 0.10, ..., 0.95 with the highest Precision@(F1=1)
(--sweep adds the table as grec_sweep; --min-n-acc 90 picks the best among the thresholds with N-acc >= 90, for
when an answer to an expression that refers to nothing costs more than a missed one). These figures are also
printed readably on stderr. --save-threshold stores the best threshold in the evaluated model folder's config.yaml.

CHECKPOINT: a model folder, a training output folder (its checkpoints/best), a shipped model name (synthref) or a
Hugging Face hub id. DATASPEC: a config YAML (its data section), a folder of ``<split>.jsonl`` files, a ``.jsonl``
file (a split of its own: evaluated whole unless --split picks the lines whose "split" key matches), or
``FORMAT:ROOT[,key=value...]`` such as ``transvg:data/splits,dataset=unc,image_root=/coco/train2014``.
Without --data the checkpoint's own data config is used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lgrnet.commands.options import add_precision_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint, print metrics as JSON",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (e.g. runs/x/checkpoints/best), a training output folder, a shipped model "
                             "(synthref) or a hub id")
    parser.add_argument("--data", default=None, metavar="DATASPEC", help="what to evaluate on (see above)")
    parser.add_argument("--split", default=None,
                        help="split name: val, test, testA, testB, ... (default: the data's val split; a single "
                             ".jsonl file: all of it)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    parser.add_argument("--output", default=None, metavar="PREDS.JSONL",
                        help="write per-sample predictions (boxes in original-image pixels)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--sweep", action="store_true",
                        help="GREC models: print (stderr) and report (grec_sweep) the figures at thresholds 0.05 to "
                             "0.95")
    parser.add_argument("--save-threshold", action="store_true",
                        help="GREC models: write the swept best threshold into the model folder's config "
                             "(model.grec.threshold); the folder must be yours and writable")
    parser.add_argument("--min-n-acc", type=float, default=None, metavar="PCT",
                        help="GREC models: the best threshold is the one with the highest Precision@(F1=1) among "
                             "those whose N-acc is at least PCT (0-100); when none is, the one with the highest "
                             "N-acc")
    add_precision_argument(parser, help="fp32 (default, as the reference; 'off' is accepted too) or bf16/fp16 "
                           "autocast", old_dtype_name=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from lgrnet.engine.distributed import cleanup_distributed
    from lgrnet.engine.evaluate import evaluate_checkpoint
    from lgrnet.errors import LGRNetError

    if args.batch_size is not None and args.batch_size < 1:
        raise LGRNetError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.min_n_acc is not None and not 0.0 <= args.min_n_acc <= 100.0:
        raise LGRNetError(f"--min-n-acc {args.min_n_acc:g}: must be a percentage from 0 to 100")
    result = None
    try:
        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.output,
                                     args.device, args.precision, sweep=args.sweep,
                                     save_threshold=args.save_threshold, min_n_acc=args.min_n_acc)
    finally:
        cleanup_distributed(synchronize=result is not None)
    if int(os.environ.get("RANK", "0")) == 0:
        if "grec_precision" in result:
            print(grec_report(result), file=sys.stderr)
        print(json.dumps(result))
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _constraint(result: dict[str, Any]) -> str:
    """How ``--min-n-acc`` shaped the best threshold, for the report."""
    if result.get("grec_min_n_acc") is None:
        return ""
    if result["grec_best_meets_min_n_acc"]:
        return f" (of those with N-acc >= {result['grec_min_n_acc']:g})"
    return f" (none reaches N-acc {result['grec_min_n_acc']:g}: the highest N-acc)"


def grec_report(result: dict[str, Any]) -> str:
    """The GREC figures of an evaluation result, readable: at the model's threshold, the best threshold, the sweep
    table when there is one, and where a saved threshold went."""
    lines = [
        f"GREC on {result['grec_count']} expressions ({result['grec_single_count']} single-target, "
        f"{result['grec_multi_count']} multi-target, {result['grec_none_count']} no-target), score threshold "
        f"{result['grec_threshold']:.2f}:",
        f"  Precision@(F1=1, IoU>=0.5)  {_pct(result['grec_precision'])}",
        f"  N-acc (no-target, no box)   {_pct(result['grec_n_acc'])}",
        f"  T-acc (target, >= 1 box)    {_pct(result['grec_t_acc'])}",
        f"  Acc@0.5 top box, single     {_pct(result['grec_single_acc50'])}",
        f"  best threshold {result['grec_best_threshold']:.2f}{_constraint(result)}: Precision@(F1=1) "
        f"{_pct(result['grec_best_precision'])}, N-acc {_pct(result['grec_best_n_acc'])}",
    ]
    if "grec_sweep" in result:
        lines.append("  threshold  Prec@F1=1   N-acc   T-acc")
        lines += [f"  {row['threshold']:9.2f}  {_pct(row['precision']):>9}  {_pct(row['n_acc']):>6}  "
                  f"{_pct(row['t_acc']):>6}" for row in result["grec_sweep"]]
    if "grec_saved_to" in result:
        lines.append(f"  saved threshold {result['grec_saved_threshold']:.2f} to {result['grec_saved_to']}")
    return "\n".join(lines)
