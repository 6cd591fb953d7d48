"""``data.format: hf-parquet``: the lmms-lab and jxu124 layouts of RefCOCO/+/g on the Hugging Face hub.

Fixtures are tiny parquet files written here from the datasets' documented schemas (column names and types of
their dataset cards); boxes are checked against conversions written out by hand.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from PIL import Image  # noqa: E402

from lgrnet.cli import main  # noqa: E402
from lgrnet.config import DATA_FORMATS, DataConfig  # noqa: E402
from lgrnet.data.readers import load_records  # noqa: E402
from lgrnet.data.readers.hf_parquet import SplitCountWarning, detect_layout, hf_splits, read_hf_parquet  # noqa: E402
from lgrnet.data.readers.standard import STANDARD_COUNTS  # noqa: E402
from lgrnet.errors import DataError  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def jpeg(colour: tuple[int, int, int], size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def write(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# lmms-lab/RefCOCO{,plus,g}: one row per referred object, `answer` = its expressions, bbox COCO xywh pixels.
LMMS_SCHEMA = pa.schema([
    ("question_id", pa.string()), ("image", IMAGE), ("question", pa.string()), ("answer", pa.list_(pa.string())),
    ("segmentation", pa.list_(pa.float32())), ("bbox", pa.list_(pa.float32())), ("iscrowd", pa.int8()),
    ("file_name", pa.string()),
])


def lmms_row(qid: str, answers: list[str], bbox: list[float], file_name: str, image: bytes | None = None) -> dict:
    return {"question_id": qid, "image": {"bytes": image, "path": None} if image else None,
            "question": "Please provide the bounding box of the region this sentence describes.",
            "answer": answers, "segmentation": [0.0] * 6, "bbox": bbox, "iscrowd": 0, "file_name": file_name}


# jxu124/refcoco{,plus,g}: one row per ref of the refer API, no images, bbox x1 y1 x2 y2 pixels.
SENTENCE = pa.struct([("raw", pa.string()), ("sent", pa.string()), ("sent_id", pa.int64()),
                      ("tokens", pa.list_(pa.string()))])
JXU_SCHEMA = pa.schema([
    ("sent_ids", pa.list_(pa.int64())), ("file_name", pa.string()), ("ann_id", pa.int64()), ("ref_id", pa.int64()),
    ("image_id", pa.int64()), ("split", pa.string()), ("sentences", pa.list_(SENTENCE)),
    ("category_id", pa.int64()), ("raw_anns", pa.string()), ("raw_image_info", pa.string()),
    ("raw_sentences", pa.string()), ("image_path", pa.string()), ("bbox", pa.list_(pa.float64())),
    ("captions", pa.list_(pa.string())), ("global_image_id", pa.string()), ("anns_id", pa.string()),
])


def jxu_row(ref_id: int, image_id: int, split: str, sents: list[tuple[int, str]], bbox: list[float]) -> dict:
    name = f"COCO_train2014_{image_id:012d}.jpg"
    return {"sent_ids": [i for i, _ in sents], "file_name": name.replace(".jpg", f"_{ref_id}.jpg"),
            "ann_id": ref_id + 1000, "ref_id": ref_id, "image_id": image_id, "split": split,
            "sentences": [{"raw": s.capitalize(), "sent": s, "sent_id": i, "tokens": s.split()} for i, s in sents],
            "category_id": 1, "raw_anns": "{}", "raw_image_info": "{}", "raw_sentences": "[]",
            "image_path": f"coco/train2014/{name}", "bbox": bbox, "captions": [s for _, s in sents],
            "global_image_id": f"coco.{image_id}", "anns_id": str(ref_id + 1000)}


# jxu124/refcoco-benchmark: one row per image with every ref of the split, COCO annotation bbox xywh pixels.
ANN_INFO = pa.struct([("area", pa.float64()), ("bbox", pa.list_(pa.float64())), ("category_id", pa.int64()),
                      ("id", pa.int64()), ("image_id", pa.int64()), ("iscrowd", pa.int64()),
                      ("segmentation", pa.list_(pa.list_(pa.float64())))])
REF_INFO = pa.struct([("ann_id", pa.int64()), ("category_id", pa.int64()), ("file_name", pa.string()),
                      ("image_id", pa.int64()), ("ref_id", pa.int64()), ("sent_ids", pa.list_(pa.int64())),
                      ("sentences", pa.list_(SENTENCE)), ("split", pa.string())])
IMAGE_INFO = pa.struct([("file_name", pa.string()), ("height", pa.int64()), ("id", pa.int64()),
                        ("width", pa.int64())])
BENCH_SCHEMA = pa.schema([("ref_list", pa.list_(pa.struct([("ann_info", ANN_INFO), ("ref_info", REF_INFO)]))),
                          ("image_info", IMAGE_INFO), ("image", IMAGE)])


def bench_row(image_id: int, refs: list[tuple[int, list[float], list[tuple[int, str]]]], split: str,
              image: bytes) -> dict:
    name = f"COCO_train2014_{image_id:012d}.jpg"
    ref_list = [{
        "ann_info": {"area": 1.0, "bbox": bbox, "category_id": 1, "id": ref_id + 1000, "image_id": image_id,
                     "iscrowd": 0, "segmentation": [[0.0, 0.0, 1.0, 1.0]]},
        "ref_info": {"ann_id": ref_id + 1000, "category_id": 1, "file_name": name, "image_id": image_id,
                     "ref_id": ref_id, "sent_ids": [i for i, _ in sents], "split": split,
                     "sentences": [{"raw": s, "sent": s, "sent_id": i, "tokens": s.split()} for i, s in sents]},
    } for ref_id, bbox, sents in refs]
    return {"ref_list": ref_list, "image_info": {"file_name": name, "height": 30, "id": image_id, "width": 40},
            "image": {"bytes": image, "path": name}}


def test_lmms_lab_val_boxes_images_and_count_warning(tmp_path):
    red, blue = jpeg((255, 0, 0)), jpeg((0, 0, 255))
    root = tmp_path / "RefCOCO"
    # val in two shards, as the hub stores it; the second file's image is already in image_root
    write(root / "data" / "val-00000-of-00002.parquet", [
        lmms_row("q0", ["man on left", "left guy"], [10.0, 20.0, 30.0, 40.0], "COCO_train2014_000000000001.jpg", red),
    ], LMMS_SCHEMA)
    write(root / "data" / "val-00001-of-00002.parquet", [
        lmms_row("q1", ["red car"], [0.5, 1.5, 2.0, 3.0], "COCO_train2014_000000000002.jpg", blue),
    ], LMMS_SCHEMA)
    write(root / "data" / "testA-00000-of-00001.parquet", [
        lmms_row("q2", ["woman"], [1.0, 1.0, 5.0, 5.0], "COCO_train2014_000000000003.jpg", red)], LMMS_SCHEMA)
    images = tmp_path / "coco"
    images.mkdir()
    (images / "COCO_train2014_000000000002.jpg").write_bytes(b"kept as it is")

    assert detect_layout(root / "data" / "testA-00000-of-00001.parquet") == "lmms-lab"
    assert hf_splits(root, "refcoco") == ["val", "testA"]
    with pytest.warns(SplitCountWarning) as caught:
        records = read_hf_parquet(root, "refcoco", "val", images)
    assert [(r.expression, r.box) for r in records] == [
        ("man on left", (10.0, 20.0, 40.0, 60.0)), ("left guy", (10.0, 20.0, 40.0, 60.0)),
        ("red car", (0.5, 1.5, 2.5, 4.5)),
    ]
    assert {r.split for r in records} == {"val"} and len({r.id for r in records}) == 3
    assert Path(records[0].image) == images / "COCO_train2014_000000000001.jpg"
    assert Path(records[0].image).read_bytes() == red  # unpacked from the parquet file
    assert (images / "COCO_train2014_000000000002.jpg").read_bytes() == b"kept as it is"
    assert not list(images.glob(".*part"))
    message = str(caught[0].message)
    assert "lmms-lab" in message and "unc val" in message
    assert f"3 expressions where the standard has 10,834 ({3 - 10834:+,})" in message
    assert f"2 objects where the standard has 3,811 ({2 - 3811:+,})" in message


def test_lmms_lab_val_with_5000_extra_rows_warns_and_the_standard_size_does_not(tmp_path):
    standard = STANDARD_COUNTS[("unc", "val")]
    # 3,811 objects with 10,834 expressions over 1,500 images: 3,212 objects with 3 expressions, 599 with 2
    three = standard.expressions - 2 * standard.refs
    rows = [lmms_row(f"q{i}", ["a"] * (3 if i < three else 2), [1.0, 2.0, 3.0, 4.0],
                     f"COCO_train2014_{i % standard.images:012d}.jpg") for i in range(standard.refs)]
    # two shards sharing images: an image counts once
    write(tmp_path / "std" / "val-00000-of-00002.parquet", rows[:2000], LMMS_SCHEMA)
    write(tmp_path / "std" / "val-00001-of-00002.parquet", rows[2000:], LMMS_SCHEMA)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitCountWarning)
        assert len(read_hf_parquet(tmp_path / "std", "unc", "val")) == 10_834
    extra = [lmms_row(f"x{i}", ["b"], [1.0, 2.0, 3.0, 4.0], f"COCO_train2014_{900000 + i:012d}.jpg")
             for i in range(5000)]
    write(tmp_path / "hub" / "val-00000-of-00001.parquet", rows + extra, LMMS_SCHEMA)
    with pytest.warns(SplitCountWarning, match=r"8,811 objects where the standard has 3,811 \(\+5,000\)"):
        read_hf_parquet(tmp_path / "hub", "refcoco", "val")


def test_lmms_lab_refcoco_test_is_not_a_standard_split(tmp_path):
    write(tmp_path / "data" / "test-00000-of-00001.parquet",
          [lmms_row("q", ["dog"], [1.0, 2.0, 3.0, 4.0], "COCO_train2014_000000000009.jpg")], LMMS_SCHEMA)
    with pytest.warns(SplitCountWarning, match="'test' is not a standard split of unc"):
        assert len(read_hf_parquet(tmp_path, "refcoco", "test")) == 1


def test_jxu124_maps_split_names_and_keeps_xyxy(tmp_path):
    root = tmp_path / "refcoco"
    write(root / "data" / "test-00000-of-00001.parquet", [
        jxu_row(7, 42, "testA", [(70, "man in red"), (71, "red shirt guy")], [5.0, 6.0, 25.0, 36.0]),
    ], JXU_SCHEMA)
    write(root / "data" / "validation-00000-of-00001.parquet", [
        jxu_row(8, 43, "val", [(80, "cat")], [1.0, 2.0, 3.0, 4.0])], JXU_SCHEMA)
    write(root / "data" / "testB-00000-of-00001.parquet", [
        jxu_row(9, 44, "testB", [(90, "cup")], [1.0, 2.0, 3.0, 4.0])], JXU_SCHEMA)

    assert detect_layout(root / "data" / "testB-00000-of-00001.parquet") == "jxu124"
    assert hf_splits(root, "unc") == ["val", "testA", "testB"]
    with pytest.warns(SplitCountWarning, match="jxu124: unc testA has 2 expressions"):
        records = read_hf_parquet(root, "refcoco", "testA", tmp_path / "train2014")
    assert [(r.expression, r.box, r.id) for r in records] == [
        ("man in red", (5.0, 6.0, 25.0, 36.0), "jxu124/testA/70"),
        ("red shirt guy", (5.0, 6.0, 25.0, 36.0), "jxu124/testA/71"),
    ]
    # no images in this layout: the COCO file name (not the ref's suffixed file_name) joined to image_root
    assert records[0].image == str(tmp_path / "train2014" / "COCO_train2014_000000000042.jpg")
    assert not (tmp_path / "train2014").exists()
    with pytest.raises(DataError, match="jxu124's 'test' file is the standard testA: ask for testA"):
        read_hf_parquet(root, "refcoco", "test")
    with pytest.raises(DataError, match="no parquet file of split 'train'"):
        read_hf_parquet(root, "refcoco", "train")


def test_jxu124_benchmark_one_row_per_image(tmp_path):
    green = jpeg((0, 255, 0))
    root = tmp_path / "refcoco-benchmark"
    write(root / "data" / "refcoco_unc_testB-00000-of-00001-0a1b2c3d.parquet", [
        bench_row(5, [(50, [2.0, 4.0, 10.0, 8.0], [(500, "left cup"), (501, "cup")]),
                      (51, [0.0, 0.0, 40.0, 30.0], [(510, "table")])], "testB", green),
        bench_row(6, [(60, [3.0, 3.0, 3.0, 3.0], [(600, "plate")])], "testB", jpeg((9, 9, 9))),
    ], BENCH_SCHEMA)
    write(root / "data" / "refcoco_plus_unc_val-00000-of-00001-99.parquet",
          [bench_row(7, [(70, [1.0, 1.0, 1.0, 1.0], [(700, "x")])], "val", green)], BENCH_SCHEMA)
    assert detect_layout(root / "data" / "refcoco_plus_unc_val-00000-of-00001-99.parquet") == "jxu124-benchmark"
    assert hf_splits(root, "unc") == ["testB"] and hf_splits(root, "refcoco+") == ["val"]

    with pytest.warns(SplitCountWarning) as caught:
        records = read_hf_parquet(root, "unc", "testB", tmp_path / "img")
    assert [(r.expression, r.box, r.id) for r in records] == [
        ("left cup", (2.0, 4.0, 12.0, 12.0), "jxu124-benchmark/testB/500"),
        ("cup", (2.0, 4.0, 12.0, 12.0), "jxu124-benchmark/testB/501"),
        ("table", (0.0, 0.0, 40.0, 30.0), "jxu124-benchmark/testB/510"),
        ("plate", (3.0, 3.0, 6.0, 6.0), "jxu124-benchmark/testB/600"),
    ]
    assert Path(records[0].image).read_bytes() == green
    message = str(caught[0].message)
    assert "jxu124-benchmark: unc testB" in message
    assert f"3 objects where the standard has 1,810 ({3 - 1810:+,})" in message
    assert f"2 images where the standard has 750 ({2 - 750:+,})" in message


def test_normalised_boxes_and_unknown_layouts_are_refused(tmp_path):
    write(tmp_path / "n" / "val.parquet",
          [lmms_row("q", ["a"], [0.1, 0.2, 0.3, 0.4], "COCO_train2014_000000000001.jpg")], LMMS_SCHEMA)
    with pytest.raises(DataError, match="normalised boxes"):
        read_hf_parquet(tmp_path / "n", "refcoco", "val")
    write(tmp_path / "o" / "val.parquet", [{"text": "a"}], pa.schema([("text", pa.string())]))
    with pytest.raises(DataError, match="not a RefCOCO parquet layout"):
        read_hf_parquet(tmp_path / "o", "refcoco", "val")
    with pytest.raises(DataError, match="unknown RefCOCO dataset 'flickr'"):
        read_hf_parquet(tmp_path / "n", "flickr", "val")


def test_missing_pyarrow_is_a_one_line_error(tmp_path, monkeypatch):
    write(tmp_path / "val.parquet", [lmms_row("q", ["a"], [1, 2, 3, 4], "a.jpg")], LMMS_SCHEMA)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import pyarrow.parquet now raises ImportError
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'lgrnet\[hf\]'"):
        read_hf_parquet(tmp_path / "val.parquet", "refcoco", "val")


def test_load_records_and_data_stats_read_the_format(tmp_path, capsys):
    assert "hf-parquet" in DATA_FORMATS
    write(tmp_path / "RefCOCOg" / "data" / "test-00000-of-00001.parquet",
          [lmms_row("q", ["the dog on the sofa", "brown dog"], [4.0, 4.0, 8.0, 8.0],
                    "COCO_train2014_000000000011.jpg", jpeg((1, 2, 3)))], LMMS_SCHEMA)
    config = DataConfig(format="hf-parquet", dataset="refcocog", root=str(tmp_path / "RefCOCOg"),
                        image_root=str(tmp_path / "coco"))
    with pytest.warns(SplitCountWarning, match="gref_umd test"):
        records = load_records(config, "test")
    assert len(records) == 2 and Path(records[0].image).is_file()
    with pytest.warns(SplitCountWarning):
        assert main(["data", "stats", "--format", "hf-parquet", "--root", str(tmp_path / "RefCOCOg"),
                     "--dataset", "refcocog"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| refcocog test"))
    assert [c.strip() for c in row.strip("|").split("|")][1:3] == ["2", "1"]



def test_data_convert_unpacks_embedded_images_next_to_the_jsonl(tmp_path):
    from lgrnet.data.readers import read_jsonl

    image = jpeg((5, 6, 7))
    write(tmp_path / "hub" / "data" / "testB-00000-of-00001.parquet",
          [lmms_row("q", ["bowl"], [1.0, 2.0, 3.0, 4.0], "COCO_train2014_000000000005.jpg", image)], LMMS_SCHEMA)
    out = tmp_path / "out" / "refcoco_testB.jsonl"
    with pytest.warns(SplitCountWarning):
        assert main(["data", "convert", "--format", "hf-parquet", "--root", str(tmp_path / "hub"), "--dataset",
                     "refcoco", "--image-root", str(tmp_path / "out" / "images"), "-o", str(out)]) == 0
    (record,) = read_jsonl(out)
    assert (record.expression, record.box, record.split) == ("bowl", (1.0, 2.0, 4.0, 6.0), "testB")
    assert Path(record.image).read_bytes() == image
    assert json.loads(out.read_text())["image"] == "images/COCO_train2014_000000000005.jpg"


@pytest.mark.slow  # builds a tiny model folder (seconds to half a minute on a busy CPU)
def test_eval_reads_a_parquet_download_with_embedded_images(tmp_path, checkpoint, capsys):
    root = tmp_path / "RefCOCO"
    write(root / "data" / "testA-00000-of-00001.parquet", [
        lmms_row("q0", ["man on left", "left guy"], [10.0, 5.0, 12.0, 20.0], "COCO_train2014_000000000001.jpg",
                 jpeg((200, 10, 10))),
        lmms_row("q1", ["woman"], [2.0, 2.0, 8.0, 8.0], "COCO_train2014_000000000002.jpg", jpeg((10, 200, 10))),
    ], LMMS_SCHEMA)
    spec = f"hf-parquet:{root},dataset=refcoco,image_root={tmp_path / 'coco'},num_workers=0"
    with pytest.warns(SplitCountWarning, match="lmms-lab: unc testA"):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", spec, "--split", "testA",
                     "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == [
        "COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"]
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the output says what the number was measured on, and that it is not the standard testA (5,657 expressions)
    assert {k: result[k] for k in ("data", "dataset", "split_by", "split", "split_count", "standard_count",
                                   "matches_standard")} == {
        "data": "hf-parquet", "dataset": "RefCOCO", "split_by": "unc", "split": "testA", "split_count": 3,
        "standard_count": 5_657, "matches_standard": False}
    assert result["count"] == 3
