"""``lgrnet eval``: evaluate a checkpoint and print one JSON object of metrics (Acc@0.5, Acc@0.75, mIoU,
spatial / non-spatial Acc@0.5; ``orig_*`` in original-image pixels).

DATASPEC: a config YAML (its data section), a folder of ``<split>.jsonl`` files, a ``.jsonl`` file, or
``FORMAT:ROOT[,key=value...]`` such as ``transvg:data/splits,dataset=unc,image_root=/coco/train2014``.
Without --data the checkpoint's own data config is used.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint, print metrics as JSON",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (e.g. runs/x/checkpoints/best), a training output folder, or a hub id")
    parser.add_argument("--data", default=None, metavar="DATASPEC", help="what to evaluate on (see above)")
    parser.add_argument("--split", default="val", help="split name: val, test, testA, testB, ... (default val)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    parser.add_argument("--output", default=None, metavar="PREDS.JSONL",
                        help="write per-sample predictions (boxes in original-image pixels)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="off", choices=["off", "bf16", "fp16"],
                        help="autocast during evaluation (default off = fp32, as the reference)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import json
    import os

    from lgrnet.engine.distributed import cleanup_distributed
    from lgrnet.engine.evaluate import evaluate_checkpoint

    if args.batch_size is not None and args.batch_size < 1:
        from lgrnet.errors import LGRNetError

        raise LGRNetError(f"--batch-size {args.batch_size}: must be at least 1")
    try:
        result = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.batch_size, args.output,
                                     args.device, args.precision)
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0
