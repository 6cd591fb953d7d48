"""Standard split sizes (counted from the real TransVG split files) and the provenance lgrnet eval records."""

from __future__ import annotations

from pathlib import Path

import pytest

from lgrnet.config import DataConfig
from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.data.readers.standard import STANDARD_COUNTS, count_mismatch, split_provenance

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "transvg_splits"


@pytest.mark.parametrize("key,split", [k for k, v in STANDARD_COUNTS.items() if "split files" in v.source])
def test_standard_counts_are_those_of_the_transvg_split_files(key, split):
    """expressions = rows, objects = distinct COCO annotation files, images = distinct image names."""
    rows = safe_load(SPLITS / key / f"{key}_{split}.pth")
    count = STANDARD_COUNTS[(key, split)]
    assert (count.expressions, count.images) == (len(rows), len({row[0] for row in rows}))
    if count.refs is not None:
        assert count.refs == len({row[1] for row in rows})


def test_count_mismatch_names_what_differs():
    assert count_mismatch("x", "unc", "testB", 5_095, 1_810, 750) is None
    assert count_mismatch("x", "unc", "testB", 5_095) is None  # counts not given are not compared
    message = count_mismatch("copy", "gref_umd", "val", 4_896, 7_573, 1_300)
    assert message.startswith("copy: gref_umd val has 7,573 objects where the standard has 2,573 (+5,000);")
    assert "expressions" not in message and "images" not in message
    assert "not a standard split of unc" in count_mismatch("copy", "unc", "test", 1)


@pytest.mark.parametrize("data,split,count,expected", [
    (DataConfig(format="transvg", dataset="unc"), "testA", 5_657, ("RefCOCO", "unc", 5_657, True)),
    (DataConfig(format="transvg", dataset="gref_umd"), "val", 4_000, ("RefCOCOg", "umd", 4_896, False)),
    (DataConfig(format="refer", dataset="refcocog", refer_split_by="umd"), "val", 4_896,
     ("RefCOCOg", "umd", 4_896, True)),
    (DataConfig(format="refer", dataset="refcocog", refer_split_by="google"), "val", 9, ("RefCOCOg", "google", None,
                                                                                           None)),
    (DataConfig(format="hf-parquet", dataset="refcoco+"), "testB", 4_889, ("RefCOCO+", "unc", 4_889, True)),
    (DataConfig(format="transvg", dataset="flickr"), "test", 14_481, ("Flickr30K Entities", None, 14_481, True)),
    (DataConfig(format="jsonl"), "val", 12, (None, None, None, None)),
    (DataConfig(format="synth"), "testA", 12, ("SynthRef", None, None, None)),
    (DataConfig(format="grefcoco"), "val", 7, ("gRefCOCO", "unc", None, None)),
    (DataConfig(format="grefcoco", dataset="refcoco", refer_split_by="umd"), "testA", 3,
     ("gRefCOCO", "umd", None, None)),
])
def test_split_provenance(data, split, count, expected):
    got = split_provenance(data, split, count)
    name, split_by, standard, matches = expected
    assert got == {"dataset": name, "split_by": split_by, "split": split, "split_count": count,
                   "standard_count": standard, "matches_standard": matches}
