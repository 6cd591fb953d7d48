"""Shipped models and the one resolver every command uses to turn a model reference into a local model folder.

A model reference (``--checkpoint`` of eval/predict/demo/quickstart, ``train.init_from``,
``Predictor.from_pretrained``, ``load_model``) is, in this order:

1. an existing path: a model folder (``config.yaml`` + ``model.safetensors``), or a training output folder (its
   ``checkpoints/best``, else ``checkpoints/last``);
2. a shipped model name (:data:`SHIPPED_MODELS`, or an alias from :data:`ALIASES`): a folder under the package's
   ``weights/``. ``$LGRNET_SHIPPED_MODEL`` replaces the folder of the default alias ``synthref``, and
   ``$LGRNET_SHIPPED_GREC_MODEL`` that of ``synthref-g`` (tests, or a model trained elsewhere);
3. a Hugging Face hub id ``owner/name``, downloaded where the caller allows it.

Anything else is a one-line :class:`~lgrnet.errors.CheckpointError` that lists the shipped names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lgrnet.errors import CheckpointError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
#: The package's folder of shipped models (``weights/<name>/``).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
#: Shipped model name -> what it holds. The folder is ``WEIGHTS_DIR / name``; the name says the data and the size.
SHIPPED_MODELS: dict[str, str] = {
    "synthref-small": "lgrnet-small trained on SynthRef (coloured shapes only)",
    "synthref-tiny": "lgrnet-tiny trained on SynthRef (coloured shapes only): a reasoning stack half as wide and "
                     "deep, 2.8x the training samples per CPU minute (configs/custom.yaml starts from it)",
    "synthref-g-small": "lgrnet-small with the generalized head (zero, one or many boxes with a score each) trained "
                        "on SynthRef-G (coloured shapes only)",
}
#: Short names for shipped models.
ALIASES: dict[str, str] = {"synthref": "synthref-small", "synthref-g": "synthref-g-small"}
#: What a user must know before trusting a shipped model's boxes (shown by predict, the demo and the JSON output).
CAVEATS: dict[str, str] = {
    "synthref-small": "the shipped synthref model knows only SynthRef's drawn coloured shapes; its boxes on "
                      "photographs are not meaningful (1 of 30 real COCO expressions right)",
    "synthref-tiny": "the shipped synthref-tiny model knows only SynthRef's drawn coloured shapes; its boxes on "
                     "photographs are not meaningful (1 of 30 real COCO expressions right)",
    "synthref-g-small": "the shipped synthref-g model knows only SynthRef-G's drawn coloured shapes; its boxes and "
                        "scores on photographs are not meaningful",
}
#: The shipped model the quickstart starts from.
DEFAULT_MODEL = "synthref"
#: Environment variable naming another folder for :data:`DEFAULT_MODEL` (tests, or a model trained elsewhere).
SHIPPED_MODEL_ENV = "LGRNET_SHIPPED_MODEL"
#: The shipped model with the generalized head (the quickstart's GREC part).
GREC_MODEL = "synthref-g"
#: Environment variable naming another folder for :data:`GREC_MODEL`.
SHIPPED_GREC_MODEL_ENV = "LGRNET_SHIPPED_GREC_MODEL"
#: Alias -> the environment variable that may replace its folder.
_FOLDER_ENV: dict[str, str] = {DEFAULT_MODEL: SHIPPED_MODEL_ENV, GREC_MODEL: SHIPPED_GREC_MODEL_ENV}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", "*.json"]


def shipped_names() -> list[str]:
    """Every name a model reference may use for a shipped model: per model, its short names, then its own."""
    return [n for model in SHIPPED_MODELS for n in (*(a for a, m in ALIASES.items() if m == model), model)]


def is_shipped_name(name: str) -> bool:
    return name in ALIASES or name in SHIPPED_MODELS


def shipped_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a shipped model name (it may be empty in a build without weights; see :func:`has_model`)."""
    env = _FOLDER_ENV.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    if name not in ALIASES and name not in SHIPPED_MODELS:
        raise CheckpointError(f"{name!r} is not a shipped model (known: {', '.join(shipped_names())})")
    return WEIGHTS_DIR / ALIASES.get(name, name)


def caveat_for(folder: str | os.PathLike) -> str | None:
    """The caveat of the shipped model whose folder ``folder`` is (also through ``$LGRNET_SHIPPED_MODEL`` or
    ``$LGRNET_SHIPPED_GREC_MODEL``), else None: a model a user trained carries none."""
    try:
        resolved = Path(folder).resolve()
    except OSError:
        return None
    for name, caveat in CAVEATS.items():
        if resolved == (WEIGHTS_DIR / name).resolve():
            return caveat
    for alias, env in _FOLDER_ENV.items():
        if os.environ.get(env) and resolved == Path(os.environ[env]).resolve():
            return CAVEATS.get(ALIASES.get(alias, alias))
    return None


def has_model(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / WEIGHTS_FILE).is_file()


def _local_folder(path: Path, what: str, ref: str) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{what} {ref}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, "
                              "not a file")
    if (path / WEIGHTS_FILE).is_file():
        return path
    for name in ("best", "last"):  # a training output folder (it holds the run's config.yaml too)
        if (path / "checkpoints" / name / WEIGHTS_FILE).is_file():
            return path / "checkpoints" / name
    if (path / CONFIG_FILE).is_file():
        return path  # a model folder without its weights: load_model names the missing file
    raise CheckpointError(f"{what} {ref}: neither a model folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a training "
                          "output folder with checkpoints/best or checkpoints/last")


def resolve_model(ref: str | os.PathLike, what: str = "checkpoint", *, hub: bool = True,
                  **hub_kwargs: Any) -> Path:
    """The local model folder that ``ref`` names (see the module docstring for the order). ``what`` names the
    argument in errors (``--checkpoint``, ``train.init_from``); ``hub`` allows a hub download, ``hub_kwargs`` go
    to ``huggingface_hub.snapshot_download`` (revision, cache_dir, token, local_files_only)."""
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        return _local_folder(path, what, text)
    if is_shipped_name(text):
        folder = shipped_model_folder(text)
        if not has_model(folder):
            raise CheckpointError(f"{what} {text}: the shipped model is not in this build ({folder} holds no "
                                  f"{CONFIG_FILE} + {WEIGHTS_FILE})")
        return folder
    known = f"shipped models: {', '.join(shipped_names())}"
    if not any(sep in text for sep in ("/", os.sep)):  # a bare name
        hub_hint = ", nor a Hugging Face hub id owner/name" if hub else ""
        raise CheckpointError(f"{what} {text}: no such folder, and not a shipped model name{hub_hint} ({known})")
    if not (hub and _HUB_ID.match(text)) or Path(text.split("/")[0]).exists():
        raise CheckpointError(f"{what} {text}: no such folder")  # a path
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id=text, allow_patterns=_HUB_PATTERNS,
                                        **{k: v for k, v in hub_kwargs.items() if v is not None}))
    except Exception as exc:  # network down, repository missing, gated: one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{what} {text}: not a local folder or a shipped model ({known}), and the Hugging "
                              f"Face hub download failed ({first})") from None
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{what} {text}: the hub repository has no {CONFIG_FILE} (not an lgrnet model)")
    return folder
