"""Running ``lgrnet`` in-process and checking the one-line errors its commands promise."""

from __future__ import annotations

import contextlib
import io

from lgrnet.cli import main


def run_cli_captured(args: list[str]) -> tuple[int, str, str]:
    """``lgrnet ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str, command: str) -> str:
    """The single ``lgrnet COMMAND: error: ...`` line of ``err`` (asserting there is nothing else, no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lgrnet {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]
