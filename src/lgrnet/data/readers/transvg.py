"""TransVG / ReSC split files ``<split_root>/<dataset>/<dataset>_<split>.pth`` (spec 11.1).

Each file is a legacy torch pickle of a list of tuples, read with the restricted unpickler. Box conventions
differ per dataset: COCO-based sets (unc, unc+, gref, gref_umd) store (x, y, w, h), ReferItGame and Flickr30K
Entities store (x1, y1, x2, y2). Boxes stay floats (the reference truncated them to int, spec 15.17).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.data.records import Record
from lgrnet.errors import DataError

#: dataset key -> box layout in its split files.
BOX_FORMAT = {"unc": "xywh", "unc+": "xywh", "gref": "xywh", "gref_umd": "xywh", "referit": "xyxy", "flickr": "xyxy"}
#: dataset key -> splits the field ships (train/val/trainval for all; test sets per dataset).
SPLITS = {
    "unc": ("train", "val", "trainval", "testA", "testB"),
    "unc+": ("train", "val", "trainval", "testA", "testB"),
    "gref": ("train", "val", "trainval"),
    "gref_umd": ("train", "val", "trainval", "test"),
    "referit": ("train", "val", "trainval", "test"),
    "flickr": ("train", "val", "trainval", "test"),
}


def split_file(split_root: str | Path, dataset: str, split: str) -> Path:
    return Path(split_root) / dataset / f"{dataset}_{split}.pth"


def read_transvg(
    split_root: str | Path, dataset: str, split: str, image_root: str | Path | None = None
) -> list[Record]:
    """Read one split of a TransVG dataset as records with boxes (x1, y1, x2, y2) in original pixels.

    ``trainval`` is the concatenation of ``train`` and ``val`` except for referit, which ships its own file.
    ``image_root`` is joined to every image file name (None keeps the bare file name). Record ids are
    ``<dataset>/<file split>/<row index>``, stable across runs and across ``trainval``.
    """
    if dataset not in BOX_FORMAT:
        raise DataError(f"unknown TransVG dataset {dataset!r}; expected one of {', '.join(BOX_FORMAT)}")
    if split not in SPLITS[dataset]:
        raise DataError(f"dataset {dataset!r} has no split {split!r}; expected one of {', '.join(SPLITS[dataset])}")
    parts = ["train", "val"] if split == "trainval" and dataset != "referit" else [split]
    records: list[Record] = []
    for part in parts:
        records.extend(_read_file(split_file(split_root, dataset, part), dataset, part, image_root))
    return records


def _read_file(path: Path, dataset: str, split: str, image_root: str | Path | None) -> list[Record]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found (expected <split_root>/{dataset}/{dataset}_{split}.pth)")
    rows = safe_load(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of tuples, got {type(rows).__name__}")
    xywh = BOX_FORMAT[dataset] == "xywh"
    root = os.fspath(image_root) if image_root is not None else None
    records = []
    for index, row in enumerate(rows):
        try:
            if dataset == "flickr":
                image_file, box, phrase, ref = row[0], row[1], row[2], None
            else:  # the 2nd element names the COCO annotation / ReferIt mask file
                image_file, box, phrase, ref = row[0], row[2], row[3], row[1]
            x1, y1, a, b = (float(v) for v in box)
        except (TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{path}: row {index} is not a valid {dataset} tuple ({exc})") from None
        x2, y2 = (x1 + a, y1 + b) if xywh else (a, b)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1 or x1 < 0 or y1 < 0:
            raise DataError(f"{path}: row {index} has an invalid box {list(box)} ({BOX_FORMAT[dataset]})")
        records.append(
            Record(
                image=os.path.join(root, image_file) if root else image_file,
                expression=str(phrase),
                box=(x1, y1, x2, y2),
                id=f"{dataset}/{split}/{index}",
                split=split,
                source={"format": "transvg", "dataset": dataset, "file": path.name, "row": index, "ref": ref},
            )
        )
    return records
