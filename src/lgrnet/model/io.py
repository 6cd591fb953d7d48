"""Model folders: ``config.yaml`` (the full :class:`~lgrnet.config.Config`) + ``model.safetensors`` (state dict).

The text encoder's weights are left out when ``config.model.text.save_weights`` is False (e.g. the frozen offline
MiniLM of ``lgrnet-tiny``); loading then takes them from the configured pretrained encoder. Writing atomically
(temporary folder, then rename) is the caller's job.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lgrnet.config import Config, ConfigError, explicit_keys, load_config
from lgrnet.errors import CheckpointError
from lgrnet.model.registry import CONFIG_FILE, WEIGHTS_FILE, resolve_model

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


def _read_model_folder(ref: str | Path, what: str, context: str = "") -> tuple[Path, Config]:
    """The local folder ``ref`` names and its config, after checking that both files are there; errors start
    with ``context``."""
    folder = resolve_model(ref, what)
    config_path = folder / CONFIG_FILE
    for needed in (config_path, folder / WEIGHTS_FILE):
        if not needed.is_file():
            raise CheckpointError(f"{context}model folder {folder}: missing {needed.name}")
    try:
        return folder, load_config(config_path)
    except ConfigError as exc:
        raise CheckpointError(f"{context}{config_path}: {exc}") from None


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the safetensors file ``path``, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None


def load_weights(model: nn.Module, folder: str | Path, fits: str = "the model",
                 resample_positions: bool = False) -> dict[str, torch.Tensor]:
    """Load ``folder/model.safetensors`` into the built ``model`` after checking that it fits: the file holds every
    key of the model's state dict (the text encoder's ``text.*`` may be left out as a whole, for a model saved
    without them, see :func:`save_model`), no other key, and every tensor in the model's shape. Returns the file's
    tensors. An absent or unreadable file, or one that does not fit, is a one-line :class:`CheckpointError` naming
    the file and the first mismatching key (``fits`` names the model in it). With ``resample_positions`` a visual
    position table of another image size is resampled to the model's maps (fine-tuning at another resolution)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"model folder {folder}: missing {WEIGHTS_FILE}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    expected = model.state_dict()
    text_saved = any(k.startswith(TEXT_PREFIX) for k in state)
    missing = [k for k in expected if k not in state and (text_saved or not k.startswith(TEXT_PREFIX))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        counts = [f"{len(keys)} {what} keys (first: {keys[0]})"
                  for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{path} does not fit {fits}: {', '.join(counts)}")
    if resample_positions and POSITIONS_KEY in state and state[POSITIONS_KEY].shape != expected[POSITIONS_KEY].shape:
        state[POSITIONS_KEY] = resample_visual_positions(state[POSITIONS_KEY], model.token_shapes,  # type: ignore[arg-type]
                                                         len(expected[POSITIONS_KEY]), path)
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path}: {len(wrong)} tensors have the wrong shape, first {k}: "
                              f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in {fits}")
    model.load_state_dict(state, strict=False)
    return state


POSITIONS_KEY = "visual_pos.weight"


def _map_shapes(num_visual: int) -> list[tuple[int, int]] | None:
    """The two square maps (side a, then a/2) that ``num_visual`` visual rows stand for, or None."""
    side = round((num_visual * 4 / 5) ** 0.5)
    return [(side, side), (side // 2, side // 2)] if side * side + (side // 2) ** 2 == num_visual else None


def resample_visual_positions(table: torch.Tensor, token_shapes: list[tuple[int, int]], rows: int,
                              path: Path | str = "") -> torch.Tensor:
    """A learned position table [P + Nv_old, D] (prediction rows, then each visual map row-major) resampled to
    ``token_shapes`` ([P + Nv_new, D]): the prediction rows as they are, each map bicubically (timm's
    ``resample_abs_pos_embed``)."""
    from timm.layers import resample_abs_pos_embed

    num_pred = rows - sum(h * w for h, w in token_shapes)
    old_shapes = _map_shapes(len(table) - num_pred) if num_pred >= 0 else None
    if old_shapes is None or len(old_shapes) != len(token_shapes):
        raise CheckpointError(f"{path}: {POSITIONS_KEY} has {len(table)} rows, which no image size of this model "
                              f"gives; it cannot be resampled to {rows}")
    parts, start = [table[:num_pred]], num_pred
    for (old_h, old_w), (new_h, new_w) in zip(old_shapes, token_shapes):
        grid = table[start:start + old_h * old_w].float()[None]
        parts.append(resample_abs_pos_embed(grid, [new_h, new_w], [old_h, old_w], num_prefix_tokens=0)[0]
                     .to(table.dtype))
        start += old_h * old_w
    return torch.cat(parts)


def load_model(path_or_hub_id: str | Path, device: str | torch.device = "cpu", what: str = "model"):
    """Load a model written by :func:`save_model`: a model folder, a training output folder, a shipped model name
    (``synthref``) or a hub id (:func:`lgrnet.model.registry.resolve_model`; ``what`` names the argument in
    errors). The model is built with the plain constructor and takes the folder's weights (:func:`load_weights`);
    a text encoder saved without its weights takes the configured pretrained ones. Returns ``(LGRNet in eval
    mode, Config)``."""
    from lgrnet.model.lgrnet import LGRNet
    from lgrnet.model.text import load_pretrained_text

    folder, config = _read_model_folder(path_or_hub_id, what)
    text_saved = any(k.startswith(TEXT_PREFIX) for k in _stored_shapes(folder / WEIGHTS_FILE))
    build = copy.deepcopy(config)
    if text_saved:
        build.model.text.pretrained = False  # the architecture without asking the hub: the weights are in the file
    model = LGRNet(build.model, build.loss)
    load_weights(model, folder, fits=f"the model of {folder / CONFIG_FILE}")
    if not text_saved and config.model.text.pretrained:
        load_pretrained_text(model.text, config.model.text)
    return model.to(device).eval(), config


# --------------------------------------------------------------------------------------------------------------
# train.init_from: the architecture of the run comes from the folder it starts from

# Model/loss settings that change neither the names nor the shapes of the weights: a config may differ from the
# init folder in these on purpose (fine-tuning with dropout, say) without a mismatch. Listed so that a mismatch
# names the setting that breaks the weights rather than a harmless one that also differs.
_WEIGHT_NEUTRAL = {
    "model.dropout", "model.num_heads", "model.init", "model.visual_pos_init", "model.visual_pos_input",
    "model.text.pretrained", "model.text.freeze", "model.text.save_weights", "model.text.lowercase",
    "model.text.num_mean_layers", "model.visual.drop_path_rate", "model.visual.checkpoint",
    "model.visual.swin_pad_before_shift",
}


def _flatten(data: dict, prefix: str) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and key not in ("timm_kwargs", "config_overrides"):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = copy.deepcopy(value)


def _weights_misfit(config: Config, weights_path: Path, stored_image_size: int) -> str | None:
    """Why ``weights_path`` (of a model of ``stored_image_size``) does not load into the model ``config`` describes
    (None: it does). The model is built on the meta device (no memory, no weights read) and compared with the file's
    header."""
    from lgrnet.model.lgrnet import LGRNet

    build = copy.deepcopy(config)
    build.model.text.pretrained = False  # the architecture without asking the hub
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LGRNet(build.model, build.loss).state_dict().items()}
    stored = _stored_shapes(weights_path)
    text_saved = any(k.startswith(TEXT_PREFIX) for k in stored)
    for key, shape in expected.items():
        if key.startswith(TEXT_PREFIX) and not text_saved:
            continue
        if key == POSITIONS_KEY and key in stored and stored[key][1:] == shape[1:] \
                and config.model.image_size != stored_image_size:
            continue  # another image size: load_weights(resample_positions=True) resamples the table
        if key not in stored:
            return f"the folder's weights have no {key}"
        if stored[key] != shape:
            return f"{key} is {stored[key]} in the folder's weights, {shape} in the config's model"
    extra = [k for k in stored if k not in expected]
    return f"the config's model has no {extra[0]}" if extra else None


def init_from_config(config: Config, explicit: set[str]) -> Config:
    """``config`` for a run that starts from ``train.init_from`` (a model folder, training output folder, shipped
    name such as ``synthref``, or hub id): ``train.init_from`` becomes the resolved local folder, and the ``model``
    section is the folder's, except for the ``model.*`` keys in ``explicit`` (set on purpose by the user's YAML
    files or ``--set``, not by a preset), which keep the config's values. When the result does not fit the
    folder's weights: CheckpointError naming the first differing setting."""
    ref = str(config.train.init_from)
    what = "train.init_from"
    folder, source = _read_model_folder(ref, what, context=f"{what} {ref}: ")
    weights_path = folder / WEIGHTS_FILE
    data = config.to_dict()
    model = source.to_dict()["model"]
    ours = _flatten(data["model"], "model")
    for key in sorted(k for k in explicit if k in ours):
        _set_dotted(model, key.split(".", 1)[1], ours[key])
    data["model"] = model
    data["train"]["init_from"] = str(folder.resolve())
    try:
        result = load_config(data)
    except ConfigError as exc:
        raise CheckpointError(f"{what} {ref}: {exc}") from None
    theirs = {**_flatten(source.to_dict()["model"], "model"), **_flatten(source.to_dict()["loss"], "loss")}
    now = {**_flatten(result.to_dict()["model"], "model"), **_flatten(result.to_dict()["loss"], "loss")}
    differing = [k for k in now if now[k] != theirs.get(k)]
    if not differing:
        return result
    misfit = _weights_misfit(result, weights_path, source.model.image_size)
    if misfit is None:
        return result
    key = next((k for k in differing if k not in _WEIGHT_NEUTRAL and not k.startswith("loss.")),
               next((k for k in differing if k == "loss.align"), differing[0]))
    fix = (f"leave {key} out of the config to take the folder's" if key.startswith("model.")
           else f"set {key} to the folder's value")
    raise CheckpointError(f"{what} {ref}: {key} is {theirs.get(key)!r} in the model folder but {now[key]!r} in the "
                          f"config ({misfit}); {fix}")


def load_train_config(source: str | Path | dict[str, Any] | Config = "lgrnet-swin-s",
                      overrides: list[str] | None = None) -> Config:
    """:func:`load_config` for a training run. When ``train.init_from`` names a model (a folder, a training output
    folder, a shipped name such as ``synthref``), it is resolved to its local folder and the run's ``model``
    section is that folder's, except for the ``model.*`` keys the user's YAML files or ``--set`` give on purpose
    (:func:`lgrnet.config.explicit_keys`), which win; a setting that then does not fit the folder's weights is a
    one-line error naming it (:func:`init_from_config`)."""
    config = load_config(source, overrides)
    if not config.train.init_from:
        return config
    return init_from_config(config, explicit_keys(source, overrides))
