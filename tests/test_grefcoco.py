"""The gRefCOCO reader on a fixture written from the release's documented format (grefs(unc).json + instances.json)."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import pytest

from lgrnet.config import DATA_FORMATS, load_config
from lgrnet.data.readers import load_records, read_grefcoco
from lgrnet.engine.dataspec import parse_dataspec
from lgrnet.errors import DataError

IMAGES = [
    {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 480, "width": 640},
    {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": 426, "width": 640},
]
# COCO boxes are x, y, w, h; BOXES holds the same boxes as x1, y1, x2, y2, converted by hand.
ANNOTATIONS = [
    {"id": 101, "image_id": 9, "category_id": 1, "bbox": [10.5, 20.0, 30.25, 40.0], "iscrowd": 0, "area": 1210.0},
    {"id": 102, "image_id": 9, "category_id": 1, "bbox": [100, 50, 60, 80], "iscrowd": 0, "area": 4800.0},
    {"id": 103, "image_id": 9, "category_id": 18, "bbox": [0, 0, 5, 5], "iscrowd": 1, "area": 25.0},
    {"id": 201, "image_id": 25, "category_id": 18, "bbox": [300.5, 10, 20.5, 30], "iscrowd": 0, "area": 615.0},
    {"id": 202, "image_id": 25, "category_id": 18, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12.0},
]
BOXES = {
    101: (10.5, 20.0, 40.75, 60.0),
    102: (100.0, 50.0, 160.0, 130.0),
    103: (0.0, 0.0, 5.0, 5.0),
    201: (300.5, 10.0, 321.0, 40.0),
    202: (1.0, 2.0, 4.0, 6.0),
}


def _sentence(sent_id: int, text: str, raw: str | None = None) -> dict:
    return {"sent_id": sent_id, "sent": text, "raw": raw if raw is not None else text, "tokens": text.split()}


def _ref(ref_id, image_id, ann_id, category_id, split, sentences, no_target=False) -> dict:
    file_name = next(i["file_name"] for i in IMAGES if i["id"] == image_id).replace(".jpg", f"_{ref_id}.jpg")
    return {"ref_id": ref_id, "image_id": image_id, "ann_id": ann_id, "category_id": category_id, "split": split,
            "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences], "file_name": file_name,
            "no_target": no_target}


def _refs() -> list[dict]:
    refs = [
        _ref(1, 9, [101], [1], "train", [_sentence(11, "man on the left"), _sentence(12, "left guy")]),
        _ref(2, 9, [102, 101], [1, 1], "train", [_sentence(21, "both people")]),
        _ref(3, 25, [-1], [-1], "train", [_sentence(31, "the purple elephant")], no_target=True),
        _ref(4, 25, [201, 202], [18, 18], "val", [_sentence(41, "", raw="Both dogs")]),
        _ref(5, 9, [-1], [-1], "val", [_sentence(51, "a giraffe"), _sentence(52, "the cat on the sofa")],
             no_target=True),
        _ref(6, 25, [202], [18], "testA", [_sentence(61, "small dog")]),
        _ref(7, 9, [103], [18], "testB", [_sentence(71, "the dogs in the crowd")]),
    ]
    del refs[5]["no_target"]  # a ref without the flag: inferred from ann_id
    return refs


def _write(root: Path, refs, instances=None, name: str = "grefs(unc).json") -> Path:
    folder = root / "grefcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(refs), encoding="utf-8")
    if instances is None:
        instances = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": [{"id": 1, "name": "person"},
                                                                                   {"id": 18, "name": "dog"}]}
    (folder / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    return folder


# id -> (expression, target annotation ids in ann_id order, split, image id)
EXPECTED = {
    "grefcoco(unc)/1/11": ("man on the left", [101], "train", 9),
    "grefcoco(unc)/1/12": ("left guy", [101], "train", 9),
    "grefcoco(unc)/2/21": ("both people", [102, 101], "train", 9),
    "grefcoco(unc)/3/31": ("the purple elephant", [], "train", 25),
    "grefcoco(unc)/4/41": ("Both dogs", [201, 202], "val", 25),
    "grefcoco(unc)/5/51": ("a giraffe", [], "val", 9),
    "grefcoco(unc)/5/52": ("the cat on the sofa", [], "val", 9),
    "grefcoco(unc)/6/61": ("small dog", [202], "testA", 25),
    "grefcoco(unc)/7/71": ("the dogs in the crowd", [103], "testB", 9),
}
KIND = {0: "none", 1: "single", 2: "multi"}


def test_every_sentence_becomes_a_record_with_its_whole_target_set(tmp_path):
    _write(tmp_path, _refs())
    records = read_grefcoco(tmp_path, image_root="/coco/train2014")
    assert [r.id for r in records] == list(EXPECTED)  # file order, one record per sentence
    for r in records:
        expression, ann_ids, split, image_id = EXPECTED[r.id]
        assert r.expression == expression and r.split == split
        assert r.boxes == tuple(BOXES[a] for a in ann_ids)
        assert r.targets == r.boxes
        assert r.box == (BOXES[ann_ids[0]] if ann_ids else (0.0, 0.0, 0.0, 0.0))
        assert all(isinstance(v, float) for b in r.boxes for v in b)
        # the image comes from instances.json (the ref's own file_name has a _<ref_id> suffix)
        image = next(i["file_name"] for i in IMAGES if i["id"] == image_id)
        assert r.image == os.path.join("/coco/train2014", image)
        assert r.source["ann_ids"] == ann_ids and r.source["no_target"] is (not ann_ids)
        assert r.source["ref_id"] == int(r.id.split("/")[1]) and r.source["sent_id"] == int(r.id.split("/")[2])
        assert r.source["kind"] == KIND[min(len(ann_ids), 2)] and r.source["format"] == "grefcoco"
    assert records[2].source["category_ids"] == [1, 1]
    assert records[3].source["category_ids"] == []
    # without an image root the bare file name is kept; "all" is every split
    assert read_grefcoco(tmp_path, split="all")[0].image == "COCO_train2014_000000000009.jpg"


@pytest.mark.parametrize(("split", "ref_ids"), [("train", [1, 1, 2, 3]), ("val", [4, 5, 5]), ("testA", [6]),
                                                  ("testB", [7])])
def test_split_filter(tmp_path, split, ref_ids):
    _write(tmp_path, _refs())
    records = read_grefcoco(tmp_path, split=split)
    assert [r.source["ref_id"] for r in records] == ref_ids
    assert {r.split for r in records} == {split}


def test_no_target_refs_have_an_empty_target_set(tmp_path):
    _write(tmp_path, _refs())
    empty = [r for r in read_grefcoco(tmp_path) if not r.boxes]
    assert [r.id for r in empty] == ["grefcoco(unc)/3/31", "grefcoco(unc)/5/51", "grefcoco(unc)/5/52"]
    for r in empty:
        assert r.boxes == () and r.targets == () and r.box == (0.0, 0.0, 0.0, 0.0)
        assert r.source["no_target"] is True and r.source["ann_ids"] == [] and r.source["kind"] == "none"


def test_flag_inferred_from_ann_id_and_bare_ids_accepted(tmp_path):
    refs = _refs()
    del refs[2]["no_target"]  # ann_id [-1] alone marks a no-target ref
    refs[0]["ann_id"] = 101  # grefer.py tolerates a bare id
    _write(tmp_path, refs)
    records = {r.id: r for r in read_grefcoco(tmp_path, split="train")}
    assert records["grefcoco(unc)/3/31"].boxes == () and records["grefcoco(unc)/3/31"].source["no_target"] is True
    assert records["grefcoco(unc)/1/11"].boxes == (BOXES[101],)


def test_ids_are_stable_and_unique(tmp_path):
    _write(tmp_path, _refs())
    first, second = read_grefcoco(tmp_path), read_grefcoco(tmp_path)
    assert [r.id for r in first] == [r.id for r in second]
    assert len({r.id for r in first}) == len(first)
    # a split read alone keeps the ids it has in the whole file
    assert {r.id for r in read_grefcoco(tmp_path, split="val")} <= {r.id for r in first}


def test_data_config_and_eval_dataspec_reach_the_reader(tmp_path):
    folder = _write(tmp_path, _refs())
    assert "grefcoco" in DATA_FORMATS
    # data.root is the folder holding grefcoco/ (the release's datasets/ layout) or grefcoco/ itself
    for root in (tmp_path, folder):
        cfg = load_config("lgrnet-tiny", overrides=["data.format=grefcoco", f"data.root={root}",
                                                   "data.image_root=/coco"])
        records = load_records(cfg.data, "val")
        assert [r.id for r in records] == ["grefcoco(unc)/4/41", "grefcoco(unc)/5/51", "grefcoco(unc)/5/52"]
        assert records[0].image == os.path.join("/coco", "COCO_train2014_000000000025.jpg")
    data = parse_dataspec(f"grefcoco:{tmp_path},image_root=/imgs", cfg.data)
    assert data.format == "grefcoco" and len(load_records(data, "train")) == 4


def test_pickled_refs_are_read_when_no_json_is_there(tmp_path):
    folder = _write(tmp_path, _refs())
    (folder / "grefs(unc).json").unlink()
    with open(folder / "grefs(unc).p", "wb") as f:
        pickle.dump(_refs(), f, protocol=4)
    records = read_grefcoco(tmp_path, split="val")
    assert [r.boxes for r in records] == [(BOXES[201], BOXES[202]), (), ()]


def _drop(key):
    def edit(refs, instances):
        del refs[1][key]
    return edit


def _set(index, key, value):
    def edit(refs, instances):
        refs[index][key] = value
    return edit


def _set_bbox(bbox):
    def edit(refs, instances):
        instances["annotations"][0]["bbox"] = bbox
    return edit


def _edit_sentence(refs, instances):
    del refs[0]["sentences"][1]["sent_id"]


def _blank_sentence(refs, instances):
    refs[0]["sentences"][0].update(sent="", raw="  ")


def _duplicate_ref(refs, instances):
    refs.append(copy.deepcopy(refs[0]))


def _not_a_mapping(refs, instances):
    refs.insert(1, ["not", "a", "ref"])


def _no_annotations(refs, instances):
    del instances["annotations"]


def _no_file_name(refs, instances):
    del instances["images"][1]["file_name"]


REFS, INSTANCES = r"grefs\(unc\)\.json: ", r"instances\.json: "
BAD_INPUT = {
    "missing ann_id": (_drop("ann_id"), REFS + r"ref 2 has no ann_id"),
    "missing sentences": (_drop("sentences"), REFS + r"ref 2 has no sentences"),
    "missing split": (_drop("split"), REFS + r"ref 2 has no split"),
    "missing ref_id": (_drop("ref_id"), REFS + r"ref #1 has no ref_id"),
    "not a mapping": (_not_a_mapping, REFS + r"ref #1 is a list, not a mapping"),
    "unknown annotation": (_set(0, "ann_id", [999]), REFS + r"ref 1 names annotation 999, absent from .*instances"),
    "annotation of another image": (_set(0, "ann_id", [201]),
                                    REFS + r"ref 1 \(image 9\) names annotation 201 of image 25"),
    "unknown image": (_set(0, "image_id", 77), REFS + r"ref 1 names image 77, absent from .*instances\.json"),
    "no-target ref with boxes": (_set(2, "ann_id", [201]),
                                 REFS + r"ref 3 is marked no_target but names annotations \[201\]"),
    "target ref without boxes": (_set(0, "ann_id", [-1]),
                                 REFS + r"ref 1 names no target annotation .* not marked no_target"),
    "empty target list": (_set(0, "ann_id", []), REFS + r"ref 1 names no target annotation"),
    "-1 beside annotations": (_set(1, "ann_id", [102, -1]), REFS + r"ref 2 mixes the no-target id -1 with annotations"),
    "annotation twice": (_set(1, "ann_id", [101, 101]), REFS + r"ref 2 names an annotation twice"),
    "ann_id not integers": (_set(0, "ann_id", ["101"]), REFS + r"ref 1: ann_id must be annotation ids"),
    "no_target not a bool": (_set(2, "no_target", "yes"), REFS + r"ref 3: no_target must be true or false"),
    "sentences not a list": (_set(0, "sentences", "left guy"), REFS + r"ref 1: sentences must be a list"),
    "sentence without id": (_edit_sentence, REFS + r"ref 1: sentence #1 has no sent_id"),
    "sentence without text": (_blank_sentence, REFS + r"ref 1: sentence 11 has no text"),
    "duplicate ref id": (_duplicate_ref, REFS + r"ref 1 appears twice"),
    "negative width": (_set_bbox([10, 20, -3, 4]),
                       INSTANCES + r"annotation 101 \(ref 1\) has an invalid bbox \[10, 20, -3, 4\]"),
    "short bbox": (_set_bbox([10, 20]), INSTANCES + r"annotation 101 \(ref 1\) has no x, y, w, h bbox"),
    "no annotations": (_no_annotations, INSTANCES + r"not a COCO instances file \(KeyError: 'annotations'\)"),
    "image without file name": (_no_file_name, INSTANCES + r"not a COCO instances file \(KeyError: 'file_name'\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_a_one_line_error_naming_file_and_ref(tmp_path, case):
    edit, message = BAD_INPUT[case]
    refs, instances = _refs(), {"images": copy.deepcopy(IMAGES), "annotations": copy.deepcopy(ANNOTATIONS)}
    edit(refs, instances)
    _write(tmp_path, refs, instances)
    with pytest.raises(DataError, match=message) as info:
        read_grefcoco(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_files_and_unknown_splits(tmp_path):
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json: refs file not found .*grefcoco/grefs\(unc\)\.json"):
        read_grefcoco(tmp_path)
    folder = _write(tmp_path, _refs())
    with pytest.raises(DataError, match=r"grefs\(umd\)\.json: refs file not found"):
        read_grefcoco(tmp_path, split_by="umd")
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json: no refs of split 'test' \(the file has train, val, "
                                        r"testA, testB\)"):
        read_grefcoco(tmp_path, split="test")
    (folder / "instances.json").unlink()
    with pytest.raises(DataError, match=r"instances\.json: instances file not found"):
        read_grefcoco(tmp_path)
    (folder / "grefs(unc).json").write_text('{"refs": []}', encoding="utf-8")
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json: expected a list of refs, got dict"):
        read_grefcoco(tmp_path)
    (folder / "grefs(unc).json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json: not a JSON file"):
        read_grefcoco(tmp_path)
