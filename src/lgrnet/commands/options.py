"""Options several commands share, parsed the same way everywhere."""

from __future__ import annotations

import argparse
import sys

# Kept here (not imported from the engine's list) so that `lgrnet --help` does not import torch.
PRECISIONS = ("fp32", "bf16", "fp16")


def _precision(text: str) -> str:
    return "fp32" if text == "off" else text  # "off" (no autocast; train.precision's spelling) is fp32


class _DeprecatedDtype(argparse.Action):
    """``--dtype``: the old name of ``--precision``; still works, with a note on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: note: {option_string} is now --precision", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_precision_argument(parser: argparse.ArgumentParser, help: str = "fp32, or bf16/fp16 autocast (default fp32)",
                           old_dtype_name: bool = True) -> None:
    """``--precision {fp32,bf16,fp16}`` (autocast; "off" = fp32), with ``--dtype`` as a hidden old name where the
    command had one."""
    parser.add_argument("--precision", default="fp32", type=_precision, choices=PRECISIONS, help=help)
    if old_dtype_name:
        parser.add_argument("--dtype", dest="precision", type=_precision, choices=PRECISIONS,
                            action=_DeprecatedDtype, help=argparse.SUPPRESS)
