"""The ``lgrnet`` command line: parses arguments and calls the library. Each subcommand lives in
``lgrnet.commands.<name>`` with a ``register(subparsers)`` function that sets ``func`` (the module's ``run``) on
its parser; heavy imports happen inside ``run`` so that ``lgrnet --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from lgrnet.errors import LGRNetError

# Subcommand modules, in the order `lgrnet --help` lists them.
COMMAND_MODULES = [
    "quickstart",
    "info",
    "data",
    "synth",
    "train",
    "eval",
    "predict",
    "demo",
    "benchmark",
    "export",
    "serve",
]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like the commands' own: ``lgrnet CMD: error: ...``, exit status 2.
    (Subcommand parsers are of the same class.)"""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lgrnet", description="LGR-NET referring expression comprehension")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"lgrnet.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the command's name (argparse would report them as the top-level parser's)
        prog = f"lgrnet {args.command}" if getattr(args, "command", None) else "lgrnet"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except LGRNetError as exc:
        print(f"lgrnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lgrnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
