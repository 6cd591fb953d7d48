"""Average the weights of several checkpoints of one model (uniform weight averaging, as in "model soups" or
stochastic weight averaging over the end of a run).

Checkpoints taken along one run, or a run and its continuation, lie close together; their mean often scores a
little better than any one of them. Every folder must be a model folder of the same architecture
(``config.yaml`` + ``model.safetensors``, such as ``runs/x/checkpoints/step-00003000``); the output folder gets the
first folder's ``config.yaml`` (so its score threshold) and the mean of every floating-point tensor; integer
buffers, counters such as BatchNorm's ``num_batches_tracked``, are the last folder's.

    python scripts/average_checkpoints.py runs/x/checkpoints/step-00003000 runs/x/checkpoints/last --out runs/x/avg
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lgrnet.config import ConfigError, load_config
from lgrnet.model.io import CONFIG_FILE, WEIGHTS_FILE

INFERENCE_KEYS = ("threshold", "nms_iou")


class AverageError(Exception):
    """A folder that cannot take part in the average (one line, naming it)."""


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise AverageError(f"{folder}: not a model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        # Parsed as every command parses it, so a key a config leaves out counts as its default.
        model_section = load_config(config_path).to_dict()["model"]
        state = load_file(str(weights_path))
    except (ConfigError, SafetensorError, OSError) as error:
        raise AverageError(f"{folder}: cannot read: {error}") from None
    # The score threshold and duplicate suppression are inference settings, free to differ between checkpoints.
    model_section["grec"] = {key: value for key, value in (model_section.get("grec") or {}).items()
                             if key not in INFERENCE_KEYS}
    return model_section, state


def average_state(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (accumulated in fp64, stored in the first state's dtype)."""
    first = states[0]
    for name, state in zip(names[1:], states[1:], strict=True):
        if state.keys() != first.keys():
            missing = sorted(first.keys() ^ state.keys())[0]
            raise AverageError(f"{name}: its tensors differ from {names[0]}'s (e.g. {missing})")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise AverageError(f"{name}: {key} has shape {tuple(value.shape)}, "
                                   f"{names[0]} {tuple(first[key].shape)}")
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = sum(state[key].to(torch.float64) for state in states)
            averaged[key] = (total / len(states)).to(value.dtype).contiguous()
        else:  # integer buffers are counters (BatchNorm's num_batches_tracked): the last checkpoint's
            averaged[key] = states[-1][key].clone()
    return averaged


def average_folders(folders: list[Path], out: Path) -> Path:
    if len(folders) < 2:
        raise AverageError("give at least two model folders")
    if out.exists():
        raise AverageError(f"{out}: already exists (choose a new output folder)")
    sections, states = zip(*(_read(folder) for folder in folders), strict=True)
    for folder, section in zip(folders[1:], sections[1:], strict=True):
        if section != sections[0]:
            differing = next(key for key in sections[0] if sections[0][key] != section.get(key))
            raise AverageError(f"{folder}: model.{differing} differs from {folders[0]}'s")
    averaged = average_state(list(states), [str(folder) for folder in folders])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_file(averaged, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        shutil.copyfile(folders[0] / CONFIG_FILE, tmp / CONFIG_FILE)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="model folders of one architecture")
    parser.add_argument("--out", type=Path, required=True, help="new model folder for the average")
    args = parser.parse_args(argv)
    try:
        out = average_folders(args.folders, args.out)
    except AverageError as error:
        sys.exit(f"average_checkpoints: error: {error}")
    print(f"averaged {len(args.folders)} checkpoints into {out}")


if __name__ == "__main__":
    main()
