"""``lgrnet train``: train LGR-NET from a config (one process, or one per GPU under ``torchrun``).

    lgrnet train --config configs/refcoco.yaml --set train.batch_size=8 --output-dir runs/refcoco --resume auto
    torchrun --nproc_per_node 8 -m lgrnet.cli train --config configs/refcoco.yaml --output-dir runs/refcoco
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model from a config (torchrun for several GPUs)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config YAML (configs/*.yaml) or preset name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)")
    parser.add_argument("--output-dir", default=None,
                        help="run folder for checkpoints/, metrics.jsonl, tensorboard/ (default runs/<config name>)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto': newest complete checkpoint in the output folder (fresh start if none); "
                             "or a checkpoint folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto = CUDA when available (default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    start = time.monotonic()  # the wall-clock budget (train.time_limit_minutes) includes start-up

    from lgrnet.engine.train import train
    from lgrnet.model.io import load_train_config

    # train.init_from (a model folder or a shipped name such as synthref) gives the run its model architecture.
    config = load_train_config(args.config, args.overrides)
    output_dir = Path(args.output_dir or Path("runs") / config.name)
    result = train(config, output_dir, resume=args.resume, device=args.device, start_time=start)
    summary = {"output_dir": str(result.output_dir), "epochs": result.epoch, "steps": result.step,
               "best_acc50": result.best_acc50, "stopped_early": result.stopped_early or None,
               "val": result.val_metrics}
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
