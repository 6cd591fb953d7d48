"""``lgrnet data stats`` / ``lgrnet data convert`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from script_helpers import load_script

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


def test_synth_folder_stats_skip_scenes_file(tmp_path, capsys):
    line = '{"image": "a.png", "expression": "the left cube", "box": [0, 0, 4, 4], "split": "%s"}\n'
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text(line % split * 3)
    (tmp_path / "scenes.jsonl").write_text('{"size": [64, 64], "objects": []}\n')
    assert main(["data", "stats", "--format", "synth", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| train | 3 | 1 |" in out and "| val | 3 | 1 |" in out and "100.0%" in out


def _run_script(path: Path, argv: list[str]) -> None:
    import runpy
    import sys

    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(path), run_name="__main__")
        assert exit_info.value.code == 0
    finally:
        sys.argv = old


def test_overlay_script_writes_all_30_samples(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "overlay.png"
    _run_script(Path(__file__).resolve().parents[1] / "scripts" / "overlay_real_smoke.py", ["--output", str(out)])
    printed = capsys.readouterr().out
    assert "30 samples" in printed and "largest round-trip error 0.0" in printed
    assert Image.open(out).size == (6 * 320, 5 * 350)


def test_pipeline_benchmark_reports_rates(capsys):
    _run_script(Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py",
                ["--image-size", "128", "--samples", "4", "--batch-size", "2", "--images", "synthetic"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| train", "| eval"))]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 for r in rows)


def test_shrink_images_scales_boxes_with_the_pixels(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    big = Image.new("RGB", (300, 200), "white")
    big.paste((255, 0, 0), (60, 40, 150, 120))  # the red box [60, 40, 150, 120)
    big.save(tmp_path / "img" / "big.jpg", quality=95)
    Image.new("RGB", (100, 50), "blue").save(tmp_path / "img" / "small.png")
    rows = [{"image": "img/big.jpg", "expression": "the red box", "box": [60, 40, 150, 120], "target": 3},
            {"image": "img/small.png", "expression": "everything", "box": [0, 0, 100, 50]},
            {"image": "img/big.jpg", "expression": "both boxes", "boxes": [[60, 40, 150, 120], [0, 0, 30, 20]]},
            {"image": "img/big.jpg", "expression": "the purple box", "boxes": []}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = Path(__file__).resolve().parents[1] / "scripts" / "shrink_images.py"
    _run_script(script, [str(tmp_path), "--max-side", "128", "--workers", "1"])
    assert "4 records, 2 images (1 shrunk to <= 128 px)" in capsys.readouterr().out

    shrunk = read_jsonl(tmp_path / "train-128.jsonl")
    assert [r.expression for r in shrunk] == ["the red box", "everything", "both boxes", "the purple box"]
    sx, sy = 128 / 300, 85 / 200  # target sets scale with their image, an empty one stays empty
    assert [v for box in shrunk[2].boxes for v in box] == pytest.approx([60 * sx, 40 * sy, 150 * sx, 120 * sy,
                                                                          0, 0, 30 * sx, 20 * sy])
    assert shrunk[3].boxes == ()
    image = Image.open(shrunk[0].image)
    assert image.size == (128, 85) and image.format == "PNG"
    x1, y1, x2, y2 = shrunk[0].box
    assert (x1, x2) == pytest.approx((60 * 128 / 300, 150 * 128 / 300)) and (y1, y2) == pytest.approx((40 * 85 / 200,
                                                                                                      120 * 85 / 200))
    red = np.asarray(image)[..., 0] > 200
    red &= np.asarray(image)[..., 1] < 80
    ys, xs = np.nonzero(red)  # the red pixels lie inside the scaled box, and fill most of it
    assert x1 - 1 <= xs.min() and xs.max() <= x2 and y1 - 1 <= ys.min() and ys.max() <= y2
    assert red.sum() > 0.8 * (x2 - x1) * (y2 - y1)
    assert shrunk[1].box == (0, 0, 100, 50) and Path(shrunk[1].image).name == "small.png"  # small enough: kept
    assert (tmp_path / "train.jsonl").read_text().count("img/big.jpg") == 3  # the source split is untouched
    assert json.loads((tmp_path / "train-128.jsonl").read_text().splitlines()[0])["target"] == 3  # extras kept

    shrink = load_script("shrink_images")
    assert shrink.main([str(tmp_path), "--split", "nope"]) == 2
    assert "nope.jsonl: no such split file" in capsys.readouterr().err



def test_grefcoco_stats_count_target_set_kinds_per_split(tmp_path, capsys):
    from test_grefcoco import _refs, _write

    _write(tmp_path, _refs())
    assert main(["data", "stats", "--format", "grefcoco", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| single | multi | none |" in out.splitlines()[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| grefcoco(unc)")}
    # By hand from the fixture: train = refs 1 (two sentences), 2 (two targets), 3 (no target); val = ref 4 (two
    # targets) and ref 5 (no target, two sentences); testA/testB one single-target sentence each.
    # columns: split, records, images, words mean/median/max, spatial, single, multi, none
    assert [rows["grefcoco(unc) train"][i] for i in (1, 2, 7, 8, 9)] == ["4", "2", "2", "1", "1"]
    assert [rows["grefcoco(unc) val"][i] for i in (1, 2, 7, 8, 9)] == ["3", "2", "0", "1", "2"]
    assert [rows["grefcoco(unc) testA"][i] for i in (1, 7, 8, 9)] == ["1", "1", "0", "0"]
    assert list(rows) == ["grefcoco(unc) train", "grefcoco(unc) val", "grefcoco(unc) testA", "grefcoco(unc) testB"]
    assert main(["data", "stats", "--format", "grefcoco", "--root", str(tmp_path), "--split", "val"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| grefcoco")] == \
        [line for line in out.splitlines() if line.startswith("| grefcoco(unc) val")]
    assert main(["data", "stats", "--format", "grefcoco", "--root", str(tmp_path), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lgrnet data: error: --split test:") and "train, val, testA, testB" in err
    assert "\n" not in err
    assert main(["data", "stats", "--format", "grefcoco", "--root", str(tmp_path), "--split-by", "umd"]) == 2
    assert "grefs(umd).json" in capsys.readouterr().err


def test_classic_stats_keep_their_columns(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"image": "a.png", "expression": "the cube", "box": [0, 0, 4, 4]}\n')
    assert main(["data", "stats", "--format", "jsonl", "--root", str(path)]) == 0
    assert "single" not in capsys.readouterr().out
    path.write_text('{"image": "a.png", "expression": "the cube", "box": [0, 0, 4, 4]}\n'
                    '{"image": "a.png", "expression": "both cubes", "boxes": [[0, 0, 4, 4], [5, 5, 9, 9]]}\n'
                    '{"image": "b.png", "expression": "no star", "boxes": []}\n')
    assert main(["data", "stats", "--format", "jsonl", "--root", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| mixed"))
    assert row.endswith("| 1 | 1 | 1 |")


def test_grefcoco_convert_writes_each_target_set(tmp_path, capsys):
    from test_grefcoco import BOXES, EXPECTED, _refs, _write

    _write(tmp_path, _refs())
    out = tmp_path / "out" / "grefcoco.jsonl"
    assert main(["data", "convert", "--format", "grefcoco", "--root", str(tmp_path), "--image-root",
                 str(tmp_path / "coco"), "--split", "val", "--split", "train", "-o", str(out)]) == 0
    assert "wrote 7 records" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["split"] for line in lines] == ["val"] * 3 + ["train"] * 4  # grouped in the order asked
    for line in lines:
        expression, ann_ids, split, _ = EXPECTED[line["id"]]
        assert line["expression"] == expression and line["split"] == split
        assert line["boxes"] == [list(BOXES[a]) for a in ann_ids]
        assert ("box" in line) == (len(ann_ids) == 1)  # a one-target set also carries box
    back = {r.id: r for r in read_jsonl(out)}
    assert back["grefcoco(unc)/5/51"].boxes == () and back["grefcoco(unc)/4/41"].boxes == (BOXES[201], BOXES[202])
    assert Path(back["grefcoco(unc)/1/11"].image).resolve() == (tmp_path / "coco" /
                                                               "COCO_train2014_000000000009.jpg").resolve()
