"""Model folders: ``config.yaml`` (the full :class:`~lgrnet.config.Config`) + ``model.safetensors`` (state dict).

The text encoder's weights are left out when ``config.model.text.save_weights`` is False (e.g. the frozen offline
MiniLM of ``lgrnet-tiny``); loading then takes them from the configured pretrained encoder. Writing atomically
(temporary folder, then rename) is the caller's job.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lgrnet.config import Config, ConfigError, load_config
from lgrnet.errors import CheckpointError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TEXT_PREFIX = "text."


def save_model(model: torch.nn.Module, config: Config, folder: str | Path) -> Path:
    """Write ``folder/config.yaml`` and ``folder/model.safetensors``; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model = getattr(model, "module", model)  # DDP wrapper
    state = model.state_dict()
    if not config.model.text.save_weights:
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)}
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "lgrnet_config": CONFIG_FILE})
    (folder / CONFIG_FILE).write_text(config.to_yaml())
    return folder


def _resolve_folder(path_or_hub_id: str | Path) -> Path:
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"model folder {text} does not exist (expected a folder with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}, or a Hugging Face hub id owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    except Exception as exc:  # network, auth, missing repo: one clear line
        raise CheckpointError(f"cannot download model {text!r} from the Hugging Face hub: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def load_model(path_or_hub_id: str | Path, device: str | torch.device = "cpu"):
    """Load a model folder (or hub id) written by :func:`save_model`; returns ``(LGRNet in eval mode, Config)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lgrnet.model.lgrnet import LGRNet

    folder = _resolve_folder(path_or_hub_id)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise CheckpointError(f"model folder {folder}: missing {needed.name}")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file: {exc}") from None

    build = copy.deepcopy(config)
    build.model.visual.checkpoint = None  # every visual weight comes from the file
    text_saved = any(k.startswith(TEXT_PREFIX) for k in state)
    if text_saved:
        build.model.text.pretrained = False  # architecture only: the weights are in the file (no download)
    model = LGRNet(build.model, build.loss)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and (text_saved or not k.startswith(TEXT_PREFIX))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{weights_path} does not fit the model of {config_path}: "
                              f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                              f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{weights_path}: {len(wrong)} tensors have the wrong shape, e.g. {k}: "
                              f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), config
