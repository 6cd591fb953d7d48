"""Atomic training checkpoints and ``--resume auto``.

Layout under ``OUT/checkpoints/``: one folder per checkpoint, named ``last`` (end of the newest epoch), ``best``
(best val Acc@0.5), ``epoch-0009`` (every k epochs, 0-based index as the reference) and ``step-00001234``
(periodic, within an epoch; only the newest is kept). Each folder is a model folder written by
:func:`lgrnet.model.io.save_model` (``config.yaml`` + ``model.safetensors``) plus ``training_state.pt``
(optimizer, scheduler, gradient scaler, epoch, step, RNG states, full config YAML, metrics; loadable with
``torch.load(weights_only=True)``) and a ``COMPLETE`` marker written last.

Atomicity: a checkpoint is written into a hidden temporary folder, every file is fsync'ed, the marker goes in, and
only then is the folder renamed into place (an existing folder of that name is first renamed aside and removed
afterwards). A folder is deleted marker first. A folder without ``COMPLETE``, without ``training_state.pt`` or
whose ``model.safetensors`` is shorter than its header says is never picked, so a crash mid-write or mid-delete
(or a file truncated later) loses only that checkpoint: ``--resume auto`` takes the newest intact one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lgrnet.errors import CheckpointError

MARKER = "COMPLETE"
STATE_FILE = "training_state.pt"
MODEL_FILE = "model.safetensors"
# Called as hook(folder, state) while a checkpoint is half written: its model files are in the temporary `folder`,
# its training state and marker are not yet (crash tests stop and kill the process here).
mid_write_hooks: list[Callable[[Path, dict[str, Any]], None]] = []


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    epoch: int  # epoch to continue with
    step: int  # global optimizer steps done
    batch_in_epoch: int  # optimizer steps done inside `epoch` (0 at an epoch boundary)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for item in sorted(folder.rglob("*")):
        if item.is_file():
            _fsync_path(item)
    _fsync_path(folder)


def write_checkpoint(root: Path, name: str, write_model: Callable[[Path], None], state: dict[str, Any]) -> Path:
    """Atomically write checkpoint ``root/name``: ``write_model(folder)`` fills the model part, ``state`` goes to
    ``training_state.pt``. Returns the final folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        remove_checkpoint(tmp)
    tmp.mkdir()
    write_model(tmp)
    for hook in mid_write_hooks:
        hook(tmp, state)
    torch.save(state, tmp / STATE_FILE)
    summary = {"epoch": state["epoch"], "step": state["step"], "batch_in_epoch": state["batch_in_epoch"],
               "time": time.time()}
    (tmp / MARKER).write_text(json.dumps(summary) + "\n")
    _fsync_tree(tmp)
    _replace(tmp, final)
    return final


def _replace(src: Path, dst: Path) -> None:
    old = dst.parent / f".old-{dst.name}-{os.getpid()}"
    if dst.exists():
        os.replace(dst, old)  # between these two renames only `old` (complete) exists; resume finds it
    os.replace(src, dst)
    _fsync_path(dst.parent)
    if old.exists():
        remove_checkpoint(old)


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder, its ``COMPLETE`` marker first (and on disk before anything else goes): a kill
    part-way through leaves a folder without the marker, which is never picked, rather than a "complete" one
    missing its weights."""
    if not folder.is_dir():
        folder.unlink(missing_ok=True)
        return
    try:
        (folder / MARKER).unlink()
    except FileNotFoundError:
        pass
    else:
        _fsync_path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def link_checkpoint(root: Path, source: Path, name: str) -> Path:
    """Publish a copy of a finished checkpoint under another name (hard links: files are never rewritten)."""
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        remove_checkpoint(tmp)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, tmp, copy_function=link)
    _fsync_tree(tmp)
    _replace(tmp, root / name)
    return root / name


def model_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None when it is. Cheap: reads only the header and
    compares the file size with the end of the last tensor's data offsets (a truncated file is caught)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < header_len <= size - 8:
                return f"{path.name} is truncated or not a safetensors file ({size} bytes)"
            header = json.loads(f.read(header_len))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        expected = 8 + header_len + max(ends, default=0)
    except FileNotFoundError:
        return f"no {path.name}"
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"{path.name} has an unreadable header ({type(exc).__name__})"
    if size != expected:
        return f"{path.name} is truncated: {size} bytes, its header describes {expected}"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is (marker, state file, whole weights)."""
    if not (folder / MARKER).is_file():
        return f"no {MARKER} marker (never finished)"
    if not (folder / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    return model_file_problem(folder / MODEL_FILE)


def read_info(folder: Path) -> CheckpointInfo | None:
    """The checkpoint's summary, or None when it is not complete (see :func:`checkpoint_problem`)."""
    if checkpoint_problem(folder) is not None:
        return None
    try:
        data = json.loads((folder / MARKER).read_text())
        return CheckpointInfo(folder, int(data["epoch"]), int(data["step"]), int(data["batch_in_epoch"]))
    except (ValueError, KeyError, TypeError):
        return None


def find_latest(output_dir: Path, report: Callable[[str], None] | None = None) -> CheckpointInfo | None:
    """The newest complete checkpoint under ``output_dir/checkpoints`` (most optimizer steps; `last` wins ties
    so that an end-of-epoch checkpoint with its validation metrics is preferred). Never by modification time:
    "best" and "epoch-*" are fresh copies of older states. ``report`` hears about each folder that was marked
    complete but is not usable (a missing or truncated file) and was passed over. Temporary folders of a writer
    are not candidates; the `.old-*` copy that a rewrite renames aside is (it is the newest until the rewrite
    finishes)."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".tmp-"):  # never published (a `.old-*` copy was)
            continue
        info = read_info(folder)
        if info is not None:
            found.append(info)
        elif report is not None and (folder / MARKER).is_file():
            report(f"passed over checkpoint {folder}: {checkpoint_problem(folder) or 'unreadable marker'}")
    if not found:
        return None
    return max(found, key=lambda i: (i.step, i.epoch, i.path.name == "last"))


def resolve_resume(resume: str | None, output_dir: Path,
                   report: Callable[[str], None] | None = None) -> CheckpointInfo | None:
    """``--resume``: None (fresh start), "auto" (newest complete checkpoint or a fresh start), or a path to a
    checkpoint folder or to an output folder holding ``checkpoints/``. ``report``: see :func:`find_latest`."""
    if not resume:
        return None
    if resume == "auto":
        return find_latest(output_dir, report)
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
    info = read_info(path)
    if info is not None:
        return info
    if (path / "checkpoints").is_dir():
        latest = find_latest(path, report)
        if latest is None:
            raise CheckpointError(f"--resume {resume}: no complete checkpoint under {path / 'checkpoints'}")
        return latest
    raise CheckpointError(f"--resume {resume}: not a complete checkpoint ({checkpoint_problem(path)})")


def load_state(folder: Path) -> dict[str, Any]:
    """``training_state.pt`` of a complete checkpoint, loaded safely (tensors and plain containers only)."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is incomplete: {problem}")
    try:
        return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"checkpoint {folder / STATE_FILE} cannot be read: {exc}") from None


def prune_step_checkpoints(root: Path, keep: str | None) -> None:
    """Remove ``step-*`` folders other than ``keep`` and stale temporary folders of this process."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        stale_step = folder.name.startswith("step-") and folder.name != keep
        own_temporary = folder.name.startswith((".tmp-", ".old-")) and folder.name.endswith(f"-{os.getpid()}")
        if stale_step or own_temporary:
            remove_checkpoint(folder)


def remove_stale_temporaries(root: Path) -> None:
    """Delete leftovers of a crashed writer (never complete checkpoints, except `.old-*` already superseded)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name.startswith(".tmp-"):
            remove_checkpoint(folder)
        elif folder.name.startswith(".old-"):
            final = root / folder.name[len(".old-"):].rsplit("-", 1)[0]
            if read_info(final) is not None:
                remove_checkpoint(folder)


# --------------------------------------------------------------------------------------------------------------
# RNG states as plain tensors/lists (``weights_only`` loading admits no numpy arrays)


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype("uint32"), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
