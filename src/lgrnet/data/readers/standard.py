"""The standard evaluation splits of the field: their sizes, and what a measured number was measured on.

The sizes of the val/test splits were counted from the TransVG split files (ReSC/TransVG/VLTVG/QRNet's
``<ds>/<ds>_<split>.pth``: rows = expressions, distinct COCO annotation files = referred objects, distinct image
names = images); ``train`` and RefCOCOg-umd ``test``, too large to keep beside the tests, are the published sizes
(refer API, TransVG paper Table 1; referred objects and images from the TFDS ``ref_coco`` catalogue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lgrnet.errors import DataError


@dataclass(frozen=True)
class StandardCount:
    """Size of a standard split: referring expressions (records), referred objects (refs) and images."""

    expressions: int
    refs: int | None  # None where the split files name no objects (ReferItGame masks, Flickr30K)
    images: int
    source: str


_SPLIT_FILES = "TransVG split files (transvg_splits/<ds>/<ds>_<split>.pth: rows, distinct annotation ids, images)"
_PUBLISHED = "published split sizes (refer API / TransVG paper Table 1; TFDS ref_coco catalogue for refs, images)"

#: (TransVG dataset key, standard split) -> its size.
STANDARD_COUNTS: dict[tuple[str, str], StandardCount] = {
    ("unc", "val"): StandardCount(10_834, 3_811, 1_500, _SPLIT_FILES),
    ("unc", "testA"): StandardCount(5_657, 1_975, 750, _SPLIT_FILES),
    ("unc", "testB"): StandardCount(5_095, 1_810, 750, _SPLIT_FILES),
    ("unc+", "val"): StandardCount(10_758, 3_805, 1_500, _SPLIT_FILES),
    ("unc+", "testA"): StandardCount(5_726, 1_975, 750, _SPLIT_FILES),
    ("unc+", "testB"): StandardCount(4_889, 1_798, 750, _SPLIT_FILES),
    ("gref_umd", "val"): StandardCount(4_896, 2_573, 1_300, _SPLIT_FILES),
    ("referit", "val"): StandardCount(5_842, None, 1_000, _SPLIT_FILES),
    ("flickr", "val"): StandardCount(14_433, None, 1_000, _SPLIT_FILES),
    ("flickr", "test"): StandardCount(14_481, None, 999, _SPLIT_FILES),
    ("gref_umd", "test"): StandardCount(9_602, 5_023, 2_600, _PUBLISHED),
    ("unc", "train"): StandardCount(120_624, 42_404, 16_994, _PUBLISHED),
    ("unc+", "train"): StandardCount(120_191, 42_278, 16_992, _PUBLISHED),
    ("gref_umd", "train"): StandardCount(80_512, 42_226, 21_899, _PUBLISHED),
}

#: standard splits of each dataset (the paper's partitions).
STANDARD_SPLITS = {
    "unc": ("train", "val", "testA", "testB"),
    "unc+": ("train", "val", "testA", "testB"),
    "gref_umd": ("train", "val", "test"),
    "gref": ("train", "val"),
    "referit": ("train", "val", "test"),
    "flickr": ("train", "val", "test"),
}

#: TransVG key -> (dataset name, partition the refer API calls split_by).
DATASET_NAMES = {
    "unc": ("RefCOCO", "unc"), "unc+": ("RefCOCO+", "unc"), "gref_umd": ("RefCOCOg", "umd"),
    "gref": ("RefCOCOg", "google"), "referit": ("ReferItGame", None), "flickr": ("Flickr30K Entities", None),
}

#: dataset names as data.dataset may spell them -> TransVG key (refcocog alone is the UMD partition).
_ALIASES = {
    "unc": "unc", "refcoco": "unc", "unc+": "unc+", "refcoco+": "unc+", "refcocoplus": "unc+",
    "gref_umd": "gref_umd", "refcocog": "gref_umd", "refcocog_umd": "gref_umd", "gref": "gref",
    "refcocog_google": "gref",
}
#: refer API (dataset, split_by) -> TransVG key.
_REFER_KEYS = {("refcoco", "unc"): "unc", ("refcoco+", "unc"): "unc+", ("refcocog", "umd"): "gref_umd",
               ("refcocog", "google"): "gref"}


def refcoco_key(dataset: str) -> str:
    """The TransVG key (unc, unc+, gref_umd, gref) of a RefCOCO-family name as ``data.dataset`` may spell it."""
    key = _ALIASES.get(dataset.lower())
    if key is None:
        raise DataError(f"unknown RefCOCO dataset {dataset!r}; expected one of {', '.join(_ALIASES)}")
    return key


def dataset_key(data: Any) -> str | None:
    """The TransVG key of a :class:`~lgrnet.config.DataConfig`'s dataset, None when it is not a standard one."""
    if data.format == "transvg":
        return data.dataset if data.dataset in DATASET_NAMES else None
    if data.format == "refer":
        return _REFER_KEYS.get((data.dataset.lower(), data.refer_split_by))
    if data.format == "hf-parquet":
        return _ALIASES.get(data.dataset.lower())
    return None


def count_mismatch(what: str, key: str, split: str, expressions: int, refs: int | None = None,
                   images: int | None = None) -> str | None:
    """One line saying how a split read from ``what`` differs from the standard one (None when it does not or no
    standard is known); counts given as None are not compared."""
    standard = STANDARD_COUNTS.get((key, split))
    if standard is None:
        if split not in STANDARD_SPLITS.get(key, ()):
            return (f"{what}: {key} split {split!r} is not a standard split of {key} "
                    f"({', '.join(STANDARD_SPLITS.get(key, ()))}); its numbers are not comparable with published ones")
        return None
    diffs = []
    for name, got, want in (("expressions", expressions, standard.expressions), ("objects", refs, standard.refs),
                            ("images", images, standard.images)):
        if got is not None and want is not None and got != want:
            diffs.append(f"{got:,} {name} where the standard has {want:,} ({got - want:+,})")
    if not diffs:
        return None
    return (f"{what}: {key} {split} has {'; '.join(diffs)}; numbers measured on it are not comparable with the "
            f"standard {split} split")


def split_provenance(data: Any, split: str, count: int) -> dict[str, Any]:
    """What a number measured on ``count`` records of ``split`` of ``data`` (a DataConfig) was measured on: the
    dataset, its partition (split-by), the split, its size, the standard size and whether they agree (None when
    the data is no standard dataset or the split has no known size)."""
    key = dataset_key(data)
    if key is not None:
        name, split_by = DATASET_NAMES[key]
    elif data.format == "refer":
        name, split_by = data.dataset, data.refer_split_by
    elif data.format == "grefcoco":  # grefs(<split_by>).json; no standard split sizes are recorded for it
        name, split_by = "gRefCOCO", data.refer_split_by
    else:
        name, split_by = ("SynthRef" if data.format == "synth" else None), None
    standard = STANDARD_COUNTS.get((key, split)) if key else None
    return {"dataset": name, "split_by": split_by, "split": split, "split_count": count,
            "standard_count": standard.expressions if standard else None,
            "matches_standard": (count == standard.expressions) if standard else None}
