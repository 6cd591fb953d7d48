"""``--data DATASPEC`` of ``lgrnet eval``: which data to evaluate on, in one argument.

* omitted: the data section of the checkpoint's own config;
* ``path/to/config.yaml``: a config file as ``lgrnet train --config`` reads it (``base:`` allowed; a file holding
  only a ``data:`` mapping works too); its ``data`` section is used;
* ``path/to/folder``: a custom-format folder holding ``<split>.jsonl`` (format ``jsonl``);
* ``path/to/file.jsonl``: one custom-format file, filtered by its ``split`` key;
* ``FORMAT:ROOT[,key=value...]``: shorthand, keys are ``data`` config fields, e.g.
  ``transvg:data/splits,dataset=unc,image_root=/coco/train2014`` or ``refer:data/refcocog,dataset=refcocog,
  refer_split_by=umd,image_root=/coco/train2014``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lgrnet.config import DATA_FORMATS, DataConfig, load_config
from lgrnet.errors import LGRNetError


def parse_dataspec(spec: str | None, default: DataConfig) -> DataConfig:
    """The :class:`DataConfig` that ``spec`` describes (``default``: the checkpoint's)."""
    if not spec:
        return copy.deepcopy(default)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise LGRNetError(f"--data {spec}: no such config file")
        return load_config(path).data
    if path.is_dir():
        return _with(default, ["format=jsonl", f"root={path}"])
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise LGRNetError(f"--data {spec}: no such JSONL file")
        return _with(default, ["format=jsonl", f"root={path}"])
    fmt, sep, rest = spec.partition(":")
    if sep and fmt in DATA_FORMATS:
        root, *pairs = rest.split(",")
        return _with(default, [f"format={fmt}", f"root={root}", *pairs])
    raise LGRNetError(
        f"--data {spec}: not a config .yaml, a folder or .jsonl file, nor FORMAT:ROOT[,key=value...] with FORMAT "
        f"one of {', '.join(DATA_FORMATS)}")


def _with(default: DataConfig, items: list[str]) -> DataConfig:
    from lgrnet.config import Config

    config = Config(data=copy.deepcopy(default))
    overrides = []
    for item in items:
        if "=" not in item:
            raise LGRNetError(f"--data: {item!r} must look like key=value")
        key, value = item.split("=", 1)
        # Paths and names stay strings even when they look like numbers or booleans.
        if key in ("root", "image_root", "dataset", "refer_split_by", "format", "train_split", "val_split"):
            value = json.dumps(value)  # a double-quoted YAML string
        overrides.append(f"data.{key.strip()}={value}")
    return load_config(config, overrides).data
