"""Runs the ``lgrnet`` CLI with a fault installed, for the crash tests' child processes (also under torchrun):

    python tests/fault_launcher.py [--pause-checkpoint-at-step N] [--fail-rank-at-step RANK:STEP] -- CLI ARGS...

``--pause-checkpoint-at-step N``: while the checkpoint of global step N is half written, print
``LGRNET_TEST: paused writing checkpoint FOLDER`` to stderr and sleep, so that the test can SIGKILL the process.
``--fail-rank-at-step RANK:STEP``: that rank raises before optimizer step STEP.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _pause_at(step: int):
    def pause(folder: Path, state: dict[str, Any]) -> None:
        if int(state.get("step", -1)) == step:
            print(f"LGRNET_TEST: paused writing checkpoint {folder}", file=sys.stderr, flush=True)
            time.sleep(3600)
    return pause


def _fail_at(target: str):
    def fail(rank: int, step: int) -> None:
        if target == f"{rank}:{step}":
            raise RuntimeError(f"fault injected: rank {rank} fails at step {step}")
    return fail


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="fault_launcher")
    parser.add_argument("--pause-checkpoint-at-step", type=int, default=None)
    parser.add_argument("--fail-rank-at-step", default=None, metavar="RANK:STEP")
    options = parser.parse_args(argv[:split])

    from lgrnet.cli import main as cli_main
    from lgrnet.engine import checkpoint, train

    if options.pause_checkpoint_at_step is not None:
        checkpoint.mid_write_hooks.append(_pause_at(options.pause_checkpoint_at_step))
    if options.fail_rank_at_step is not None:
        train.before_step_hooks.append(_fail_at(options.fail_rank_at_step))
    return cli_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
