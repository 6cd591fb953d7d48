"""Options several commands share, parsed the same way everywhere."""

from __future__ import annotations

import argparse
import sys

from lgrnet.errors import LGRNetError
from lgrnet.precision import PRECISIONS, normalize_precision  # torch-free: `lgrnet --help` stays fast


def _precision(text: str) -> str:
    """The precision name of ``text`` ("off" is fp32); an unknown name is left for argparse's choices check, which
    lists the choices."""
    try:
        return normalize_precision(text)
    except LGRNetError:
        return text


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



def add_model_command(subparsers: argparse._SubParsersAction, name: str, help: str,
                      description: str) -> argparse.ArgumentParser:
    """The parser of a command that runs a model: ``--checkpoint`` (any reference
    :func:`lgrnet.model.registry.resolve_model` takes), ``--device`` and ``--precision``."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (config.yaml + model.safetensors), training output folder, shipped "
                        "model name (synthref) or hub id")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    add_precision_argument(parser)
    return parser
