"""Readers: the real TransVG split files, the refer-API fixture, real_smoke, VG, JSONL, and safe unpickling."""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from lgrnet.config import load_config
from lgrnet.data.readers import (
    load_records,
    read_jsonl,
    read_refer,
    read_transvg,
    read_visual_genome,
    safe_load,
)
from lgrnet.data.readers.transvg import split_file
from lgrnet.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = SHARED / "transvg_splits"
REAL_SMOKE = SHARED / "real_smoke"

EXPECTED = {
    ("unc", "val"): 10834, ("unc", "testA"): 5657, ("unc", "testB"): 5095,
    ("unc+", "val"): 10758, ("unc+", "testA"): 5726, ("unc+", "testB"): 4889,
    ("gref_umd", "val"): 4896, ("referit", "val"): 5842,
    ("flickr", "val"): 14433, ("flickr", "test"): 14481,
}


@pytest.mark.parametrize(("dataset", "split"), sorted(EXPECTED))
def test_every_real_split_parses_with_exact_counts_and_valid_boxes(dataset, split):
    records = read_transvg(SPLITS, dataset, split, image_root="/imgs")
    assert len(records) == EXPECTED[(dataset, split)]
    assert len({r.id for r in records}) == len(records)
    for r in records:
        x1, y1, x2, y2 = r.box
        assert all(isinstance(v, float) and math.isfinite(v) for v in r.box)
        assert 0 <= x1 <= x2 and 0 <= y1 <= y2
        assert r.image.startswith("/imgs/") and r.expression and r.split == split


def test_box_conventions_and_float_precision():
    # First unc val row is xywh [407.6, 133.24, 226.67, 190.33] (SOURCES.md): x2 = x + w, no int truncation.
    first = read_transvg(SPLITS, "unc", "val")[0]
    assert first.box == pytest.approx((407.6, 133.24, 634.27, 323.57))
    assert first.image == "COCO_train2014_000000000716.jpg" and first.expression == "man on right"
    # referit stores x1y1x2y2 already.
    assert read_transvg(SPLITS, "referit", "val")[0].box == (322.0, 303.0, 359.0, 372.0)
    # flickr: 3-tuples with a float32 numpy array.
    flickr = read_transvg(SPLITS, "flickr", "val")[0]
    assert flickr.box == (53.0, 45.0, 110.0, 203.0) and flickr.expression == "man"


def test_trainval_concatenates_train_and_val(tmp_path):
    (tmp_path / "unc").mkdir()
    rows = {"train": [("a.jpg", "1.pth", [1.5, 2.0, 3.0, 4.0], "left cat", [])],
            "val": [("b.jpg", "2.pth", [0.0, 0.0, 10.0, 10.0], "dog", []), ("c.jpg", "3.pth", [1, 1, 1, 1], "x", [])]}
    for split, data in rows.items():
        with open(split_file(tmp_path, "unc", split), "wb") as f:
            pickle.dump(data, f, protocol=2)
    records = read_transvg(tmp_path, "unc", "trainval", image_root=tmp_path / "img")
    assert [r.id for r in records] == ["unc/train/0", "unc/val/0", "unc/val/1"]
    assert records[0].box == (1.5, 2.0, 4.5, 6.0)
    assert records[1].image == os.path.join(tmp_path / "img", "b.jpg")


def test_unknown_dataset_split_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown TransVG dataset"):
        read_transvg(SPLITS, "coco", "val")
    with pytest.raises(DataError, match="no split 'testA'"):
        read_transvg(SPLITS, "referit", "testA")
    with pytest.raises(DataError, match="unc_train.pth: split file not found"):
        read_transvg(tmp_path, "unc", "train")


def _real_smoke_records():
    """The manifest and, for each manifest line, the TransVG record it came from (image root = real_smoke)."""
    manifest = [json.loads(line) for line in (REAL_SMOKE / "manifest.jsonl").read_text().splitlines()]
    images = {Path(m["image"]).name for m in manifest}
    by_key = {}
    for dataset, split in sorted({(m["transvg_dataset"], m["split"]) for m in manifest}):
        for r in read_transvg(SPLITS, dataset, split, image_root=REAL_SMOKE / "images"):
            if Path(r.image).name in images:
                by_key.setdefault((dataset, split, r.source["ref"], r.expression), []).append(r)
    assert sum(len(v) for v in by_key.values()) == 30  # the reader finds exactly the manifest's rows
    matched = [by_key[(m["transvg_dataset"], m["split"], m["mask_file"], m["expression"])].pop() for m in manifest]
    return manifest, matched


def test_real_smoke_manifest_boxes_reproduced():
    manifest, records = _real_smoke_records()
    assert len(manifest) == 30
    for m, r in zip(manifest, records):
        assert r.box == pytest.approx(m["bbox_xyxy"], abs=0.01)
        assert Path(r.image) == REAL_SMOKE / m["image"] and Path(r.image).is_file()


def test_refer_fixture_yields_28_sentences_with_splits():
    records = read_refer(SHARED / "refer_format", "refcocog", "umd")
    assert len(records) == 28
    by_split = {s: [r for r in records if r.split == s] for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == 28
    assert len(read_refer(SHARED / "refer_format", "refcocog", "umd", "val")) == len(by_split["val"])
    first = records[0]
    assert first.split == "train" and first.expression.startswith("a smiling woman")
    assert first.image == "COCO_train2014_000000122469.jpg"  # from instances.json, not the ref's _<ann_id> name
    instances = json.loads((SHARED / "refer_format" / "refcocog" / "instances.json").read_text())
    x, y, w, h = next(a["bbox"] for a in instances["annotations"] if a["id"] == first.source["ann_id"])
    assert first.box == pytest.approx((x, y, x + w, y + h))
    # Every ref's sentences keep their ref's split.
    refs = safe_load(SHARED / "refer_format" / "refcocog" / "refs(umd).p")
    expected = sorted((s["sent_id"], ref["split"]) for ref in refs for s in ref["sentences"])
    assert sorted((int(r.id.split("/")[-1]), r.split) for r in records) == expected


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_crafted_pickle_is_refused_and_payload_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "unc" / "unc_val.pth"
    path.parent.mkdir()
    with open(path, "wb") as f:
        if legacy:  # torch legacy stream header, then the malicious object
            for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
                pickle.dump(header, f, protocol=2)
        pickle.dump([("a.jpg", "m", [0, 0, 1, 1], _Exploit(marker), [])], f, protocol=2)
    with pytest.raises(DataError) as info:
        read_transvg(tmp_path, "unc", "val")
    message = str(info.value)
    assert str(path) in message and "forbidden global" in message
    assert "system" in message  # posix.system / nt.system
    assert not marker.exists()
    # Control: the same payload really would run under plain pickle (so the test can fail).
    with open(path, "rb") as f:
        if legacy:
            for _ in range(3):
                pickle.load(f)
        pickle.load(f)
    assert marker.exists()


def _string(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _argument(value) -> bytes:
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int) and 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    if isinstance(value, tuple):
        return b"(" + b"".join(map(_argument, value)) + b"t"  # MARK ... TUPLE
    raise TypeError(value)


def _call(module: str, name: str, *args, stack_global: bool = False) -> bytes:
    """A pickle, written opcode by opcode, whose whole content is ``module.name(*args)``: the global by GLOBAL
    (protocol 2: "c", module, newline, name, newline) or by STACK_GLOBAL (protocol 4: two strings, then 0x93), then
    REDUCE."""
    if stack_global:
        head = b"\x80\x04" + _string(module) + _string(name) + b"\x93"
    else:
        head = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
    return head + _argument(tuple(args)) + b"R."


@pytest.mark.parametrize("stack_global", [False, True])
@pytest.mark.parametrize(
    ("module", "name", "args", "refused"),
    [
        ("builtins", "eval", ("1 + 1",), "builtins.eval"),
        ("__builtin__", "eval", ("1 + 1",), "__builtin__.eval"),  # the Python-2 spelling
        ("builtins", "getattr", ("text", "upper"), "builtins.getattr"),
        ("builtins", "__import__", ("os",), "builtins.__import__"),
        ("builtins", "exec", ("pass",), "builtins.exec"),
        ("os", "system", ("true",), "os.system"),
        ("_codecs", "encode", ("abc", "rot13"), "_codecs.encode' with encoding 'rot13'"),
        ("_codecs", "encode", ("abc", "utf-16"), "_codecs.encode' with encoding 'utf-16'"),
        ("_codecs", "decode", ("abc", "latin1"), "_codecs.decode"),
        ("_codecs", "lookup", ("latin1",), "_codecs.lookup"),
    ],
)
def test_hand_written_pickles_naming_forbidden_callables_are_refused(tmp_path, module, name, args, refused,
                                                                     stack_global):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(_call(module, name, *args, stack_global=stack_global))
    with pytest.raises(DataError) as info:
        safe_load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to unpickle forbidden global '") and refused in message, message


def test_hand_written_payloads_are_live_under_plain_pickle(tmp_path):
    # Control for the refusals above: the same bytes do run under pickle.loads, so refusing them is the point.
    marker = tmp_path / "ran"
    assert pickle.loads(_call("builtins", "eval", f"open({str(marker)!r}, 'w').close()")) is None
    assert marker.exists()
    assert pickle.loads(_call("builtins", "getattr", "text", "upper", stack_global=True))() == "TEXT"
    assert pickle.loads(_call("builtins", "__import__", "os")) is os
    assert pickle.loads(_call("_codecs", "encode", "abc", "rot13")) == "nop"
    marker.unlink()
    path = tmp_path / "payload.p"
    path.write_bytes(_call("builtins", "eval", f"open({str(marker)!r}, 'w').close()"))
    with pytest.raises(DataError, match="builtins.eval"):
        safe_load(path)
    assert not marker.exists()  # refused before the call: the payload never ran


@pytest.mark.parametrize("stack_global", [False, True])
@pytest.mark.parametrize(
    ("module", "name", "args", "expected"),
    [
        ("builtins", "set", (("a", "b"),), {"a", "b"}),
        ("__builtin__", "frozenset", (("a",),), frozenset({"a"})),
        ("builtins", "complex", (1, 2), complex(1, 2)),
        ("__builtin__", "slice", (1, 5, 2), slice(1, 5, 2)),
        ("collections", "OrderedDict", ((("k", 1), ("j", 2)),), {"k": 1, "j": 2}),
        ("_codecs", "encode", ("caf\u00e9", "latin1"), b"caf\xe9"),  # numpy's Python-2 raw bytes
        ("_codecs", "encode", ("caf\u00e9", "latin-1"), b"caf\xe9"),
        ("_codecs", "encode", ("caf\u00e9", "ISO-8859-1"), b"caf\xe9"),
    ],
)
def test_hand_written_pickles_of_allowed_globals_load(tmp_path, module, name, args, expected, stack_global):
    path = tmp_path / "ok.p"
    path.write_bytes(_call(module, name, *args, stack_global=stack_global))
    assert safe_load(path) == expected


def test_numpy_arrays_load(tmp_path):
    path = tmp_path / "arrays.p"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path.write_bytes(pickle.dumps({"a": array, "s": np.float64(2.5)}, protocol=2))
    out = safe_load(path)
    assert out["a"].dtype == np.float32 and (out["a"] == array).all() and out["s"] == 2.5


def test_safe_load_rejects_garbage(tmp_path):
    path = tmp_path / "bad.p"
    path.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataError, match="bad.p"):
        safe_load(path)


def test_visual_genome_reader(tmp_path):
    data = [
        {"id": 1, "regions": [
            {"region_id": 10, "image_id": 1, "phrase": "a red car ", "x": 5, "y": 6, "width": 20, "height": 10},
            {"region_id": 11, "image_id": 1, "phrase": "nothing", "x": 5, "y": 6, "width": 0, "height": 10},
        ]},
        {"id": 2, "regions": [{"region_id": 12, "image_id": 2, "phrase": "man on the left", "x": 0, "y": 0,
                               "width": 3.5, "height": 4}]},
    ]
    path = tmp_path / "region_descriptions.json"
    path.write_text(json.dumps(data))
    records = read_visual_genome(path, image_root="/vg")
    assert [(r.id, r.image, r.expression, r.box) for r in records] == [
        ("vg/10", "/vg/1.jpg", "a red car", (5.0, 6.0, 25.0, 16.0)),
        ("vg/12", "/vg/2.jpg", "man on the left", (0.0, 0.0, 3.5, 4.0)),
    ]
    cfg = load_config("lgrnet-tiny", overrides=["data.format=vg", f"data.root={tmp_path}", "data.image_root=/vg"])
    assert len(load_records(cfg.data, "train")) == 2
    with pytest.raises(DataError, match="only a 'train' split"):
        load_records(cfg.data, "val")
    path.write_text(json.dumps([{"id": 3, "regions": [{"x": 1}]}]))
    with pytest.raises(DataError, match="image entry 0 is malformed"):
        read_visual_genome(path)


def test_jsonl_reader_paths_splits_and_ids(tmp_path):
    path = tmp_path / "sub" / "data.jsonl"
    path.parent.mkdir()
    lines = [
        {"image": "img/a.jpg", "expression": "the cat", "box": [1, 2, 30.5, 40], "split": "train", "id": "c1"},
        {"image": "/abs/b.jpg", "expression": "a dog", "box": [0, 0, 5, 5], "split": "val"},
        {"image": "c.jpg", "expression": "tree", "box": [0, 0, 5, 5]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    records = read_jsonl(path)
    assert [r.id for r in records] == ["c1", "data/2", "data/4"]
    assert records[0].image == str(path.parent.resolve() / "img" / "a.jpg")
    assert records[1].image == "/abs/b.jpg" and records[0].box == (1.0, 2.0, 30.5, 40.0)
    assert [r.id for r in read_jsonl(path, split="val")] == ["data/2", "data/4"]  # no split = every split
    cfg = load_config("lgrnet-tiny", overrides=["data.format=jsonl", f"data.root={path}"])
    assert [r.id for r in load_records(cfg.data, "train")] == ["c1", "data/4"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"image": "a.jpg", "box": [0, 0, 1, 1]}', "missing key"),
        ('{"image": "a.jpg", "expression": "x", "box": [0, 0, 1]}', "'box' must be"),
        ('{"image": "a.jpg", "expression": "x", "box": [5, 0, 1, 1]}', "x2 > x1"),
        ('{"image": "a.jpg", "expression": "", "box": [0, 0, 1, 1]}', "'expression'"),
        ('{"image": "a.jpg", "expression": "x", "box": [0, 0, 1, "2"]}', "'box' must be"),
    ],
)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = '{"image": "a.jpg", "expression": "x", "box": [0, 0, 1, 1]}'
    path.write_text(f"{good}\n{good}\n{line}\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{message}"):
        read_jsonl(path)


def test_load_records_dispatch_transvg_and_refer():
    cfg = load_config("lgrnet-tiny", overrides=[f"data.root={SPLITS}", "data.dataset=referit", "data.image_root=/r"])
    assert len(load_records(cfg.data, "val")) == 5842
    cfg = load_config("lgrnet-tiny", overrides=["data.format=refer", f"data.root={SHARED / 'refer_format'}",
                                               "data.dataset=refcocog", "data.refer_split_by=umd"])
    assert {r.split for r in load_records(cfg.data, "test")} == {"test"}
