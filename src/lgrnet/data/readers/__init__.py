"""Dataset readers: every format of the field becomes a list of :class:`~lgrnet.data.records.Record`.

``load_records(data_config, split)`` dispatches on ``DataConfig.format``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lgrnet.data.readers.grefcoco import read_grefcoco
from lgrnet.data.readers.hf_parquet import read_hf_parquet
from lgrnet.data.readers.jsonl import read_jsonl, write_jsonl
from lgrnet.data.readers.refer import read_refer
from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.data.readers.transvg import read_transvg
from lgrnet.data.readers.visual_genome import read_visual_genome, read_visual_genome_excluding
from lgrnet.data.records import Record
from lgrnet.errors import DataError

__all__ = [
    "load_records",
    "read_grefcoco",
    "read_hf_parquet",
    "read_jsonl",
    "read_refer",
    "read_transvg",
    "read_visual_genome",
    "read_visual_genome_excluding",
    "safe_load",
    "write_jsonl",
]


def load_records(data, split: str) -> list[Record]:  # data: lgrnet.config.DataConfig
    """Records of one split for a :class:`~lgrnet.config.DataConfig`.

    * ``transvg``: ``<root>/<dataset>/<dataset>_<split>.pth``, images under ``image_root``.
    * ``refer``: ``<root>[/<dataset>]/refs(<refer_split_by>).p`` + ``instances.json``, images under ``image_root``.
    * ``vg``: ``root`` is ``region_descriptions.json`` or its folder; only a ``train`` split exists. The COCO
      images of the split files in ``exclude_images_of`` are dropped (``image_data.json`` beside it).
    * ``jsonl``: ``root`` is a folder holding ``<split>.jsonl``, or one JSONL file filtered by its ``split`` key.
    * ``synth``: the SynthRef folder ``root`` holding ``<split>.jsonl``.
    * ``hf-parquet``: a Hugging Face parquet download (lmms-lab, jxu124 layouts) or one parquet file; embedded
      images are unpacked into ``image_root``.
    * ``grefcoco``: ``<root>[/grefcoco]/grefs(<refer_split_by>).json`` + ``instances.json`` (the gRefCOCO
      release), images under ``image_root``; records carry the whole target set (``Record.boxes``, maybe empty).
    """
    fmt, root = data.format, Path(data.root)
    if fmt == "transvg":
        records = read_transvg(root, data.dataset, split, data.image_root)
    elif fmt == "refer":
        records = read_refer(root, data.dataset, data.refer_split_by, split, data.image_root)
    elif fmt == "vg":
        if split != "train":
            raise DataError(f"Visual Genome has only a 'train' split (asked for {split!r})")
        path = root / "region_descriptions.json" if root.is_dir() else root
        if data.exclude_images_of:
            records, exclusion = read_visual_genome_excluding(path, data.exclude_images_of, data.image_root)
            if int(os.environ.get("RANK", "0")) == 0:  # once per run, not once per DDP process
                print(f"lgrnet: Visual Genome: {exclusion.summary()}", file=sys.stderr, flush=True)
        else:
            records = read_visual_genome(path, data.image_root)
    elif fmt == "hf-parquet":
        records = read_hf_parquet(root, data.dataset, split, data.image_root)
    elif fmt == "grefcoco":
        records = read_grefcoco(root, data.refer_split_by, split, data.image_root)
    elif fmt in ("jsonl", "synth"):
        if root.is_dir():
            path = root / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: no JSONL file for split {split!r} in {root}")
            records = read_jsonl(path)
        else:
            records = read_jsonl(root, split=split)
    else:
        raise DataError(f"unknown data format {fmt!r}")
    if not records:
        raise DataError(f"{fmt} data at {root}: split {split!r} has no records")
    return records
