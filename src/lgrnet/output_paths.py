"""Checks that an output path can be written, made before any long work (loading a model, evaluating, training),
so that a typo or a read-only place costs a one-line error at once instead of a traceback at the end.

The checks create nothing: they find the nearest existing folder above the path and ask whether it is a folder
and writable.
"""

from __future__ import annotations

import os
from pathlib import Path

from lgrnet.errors import LGRNetError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path.cwd()


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` is, or can be created as, a writable folder; else LGRNetError naming ``option`` and the path."""
    path = Path(path)
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        where = "is a file" if existing == path.absolute() else f"is under {existing}, which is a file"
        raise LGRNetError(f"{option} {path}: {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path.absolute() else f" ({existing} is not writable)"
        raise LGRNetError(f"{option} {path}: cannot write there{where}")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` can be written as a file (its folder exists or can be created, and it is not itself a folder)."""
    path = Path(path)
    if path.is_dir():
        raise LGRNetError(f"{option} {path}: is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise LGRNetError(f"{option} {path}: the file is not writable")
    parent = path.absolute().parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise LGRNetError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LGRNetError(f"{option} {path}: cannot write to {existing}")
    return path
