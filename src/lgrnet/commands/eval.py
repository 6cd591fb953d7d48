"""``lgrnet eval``: evaluate a checkpoint and print one JSON object of metrics (Acc@0.5, Acc@0.75, mIoU,
spatial / non-spatial Acc@0.5; ``orig_*`` in original-image pixels).

    lgrnet eval --checkpoint synthref --data synth:data/synthref --split testA
    lgrnet eval --checkpoint runs/custom --data data/custom/test.jsonl --output preds.jsonl

CHECKPOINT: a model folder, a training output folder (its checkpoints/best), a shipped model name (synthref) or a
Hugging Face hub id. DATASPEC: a config YAML (its data section), a folder of ``<split>.jsonl`` files, a ``.jsonl``
file (a split of its own: evaluated whole unless --split picks the lines whose "split" key matches), or
``FORMAT:ROOT[,key=value...]`` such as ``transvg:data/splits,dataset=unc,image_root=/coco/train2014``.
Without --data the checkpoint's own data config is used.
"""

from __future__ import annotations

import argparse

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
    add_precision_argument(parser, help="fp32 (default, as the reference; 'off' is accepted too) or bf16/fp16 "
                           "autocast", old_dtype_name=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
