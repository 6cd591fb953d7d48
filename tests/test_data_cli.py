"""``lgrnet data stats`` / ``lgrnet data convert`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lgrnet.cli import main
from lgrnet.data.readers import read_jsonl, read_refer, read_transvg
from lgrnet.data.spatial import is_spatial

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_stats_on_a_real_split(capsys):
    assert main(["data", "stats", "--root", str(SHARED / "transvg_splits"), "--dataset", "unc",
                 "--split", "testB"]) == 0
    out = capsys.readouterr().out
    records = read_transvg(SHARED / "transvg_splits", "unc", "testB")
    share = 100 * sum(is_spatial(r.expression) for r in records) / len(records)
    row = next(line for line in out.splitlines() if line.startswith("| unc testB"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["5,095", "750"]
    assert cells[6] == f"{share:.1f}%" and 50 < share < 80  # RefCOCO testB is mostly spatial


def test_stats_refer_per_split(capsys):
    assert main(["data", "stats", "--format", "refer", "--root", str(SHARED / "refer_format"),
                 "--dataset", "refcocog", "--split-by", "umd"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| refcocog")]
    assert sum(int(r.split("|")[2]) for r in rows) == 28 and len(rows) == 3


def test_convert_refer_round_trips_through_jsonl(tmp_path, capsys):
    out = tmp_path / "out" / "refcocog.jsonl"
    assert main(["data", "convert", "--format", "refer", "--root", str(SHARED / "refer_format"), "--dataset",
                 "refcocog", "--split-by", "umd", "--image-root", str(tmp_path / "coco"), "-o", str(out)]) == 0
    assert "wrote 28 records" in capsys.readouterr().out
    original = sorted(read_refer(SHARED / "refer_format", "refcocog", "umd", None, tmp_path / "coco"),
                      key=lambda r: r.id)
    converted = sorted(read_jsonl(out), key=lambda r: r.id)  # written grouped by split
    assert [(r.id, r.split, r.expression) for r in converted] == [(r.id, r.split, r.expression) for r in original]
    assert [Path(r.image).resolve() for r in converted] == [Path(r.image).resolve() for r in original]
    for a, b in zip(converted, original):
        assert a.box == pytest.approx(b.box, abs=1e-4)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["image"].startswith("../coco/")  # relative to the JSONL file: the folder can move as a whole


def test_convert_transvg_split_subset(tmp_path):
    out = tmp_path / "referit.jsonl"
    assert main(["data", "convert", "--root", str(SHARED / "transvg_splits"), "--dataset", "referit",
                 "--split", "val", "--image-root", str(tmp_path), "-o", str(out)]) == 0
    records = read_jsonl(out, split="val")
    assert len(records) == 5842 and records[0].box == (322.0, 303.0, 359.0, 372.0)


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "expression": "x", "box": [0, 0, 1, 1]}\n{"image": 3}\n')
    assert main(["data", "stats", "--format", "jsonl", "--root", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lgrnet data: error: ") and "bad.jsonl:2:" in err and "\n" not in err
    assert main(["data", "stats", "--format", "refer", "--root", str(tmp_path)]) == 2
    assert "--dataset is required" in capsys.readouterr().err
