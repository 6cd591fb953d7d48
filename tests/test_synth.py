"""SynthRef: expressions are unique under an independent parser + evaluator, splits follow the spatial-word rule,
boxes are tight, output is deterministic, and the JSONL reads back through the project's custom-data reader.

The parser and evaluator below are written from the semantics stated in ``lgrnet.synth.grammar``'s docstring and
share no code with it: they read the *text* of each expression, so a wording that does not say what the
generator's query says fails here.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lgrnet.cli import main as cli_main
from lgrnet.config import DataConfig
from lgrnet.data.readers import load_records
from lgrnet.data.readers.jsonl import read_jsonl
from lgrnet.data.spatial import is_spatial
from lgrnet.synth.generate import generate, make_sample

# ---------------------------------------------------------------------------------------------------------------
# Independent parser: expression text -> semantic form

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SIZES = {"small": "small", "little": "small", "tiny": "small", "medium": "medium", "medium-sized": "medium",
         "mid-sized": "medium", "large": "large", "big": "large", "huge": "large"}
NOUNS = {"circle": "circle", "disc": "circle", "square": "square", "triangle": "triangle", "star": "star",
         "heart": "heart", "diamond": "diamond", "rhombus": "diamond", "hexagon": "hexagon"}
SUPERLATIVES = {"smallest": ("size", "min"), "tiniest": ("size", "min"), "largest": ("size", "max"),
                "biggest": ("size", "max"), "highest": ("height", "min"), "lowest": ("height", "max")}
ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3}
NUMBERS = {w: i for i, w in enumerate(
    ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"], start=1)}
RELATIONS = [("to the left of", "left of"), ("on the left of", "left of"), ("left of", "left of"),
             ("to the right of", "right of"), ("on the right of", "right of"), ("right of", "right of"),
             ("above", "above"), ("over", "above"), ("below", "below"), ("under", "below"),
             ("beneath", "below"), ("closest to", "nearest"), ("nearest to", "nearest"), ("next to", "nearest"),
             ("farthest from", "farthest"), ("furthest from", "farthest")]


def parse_np(text: str) -> dict:
    words = re.findall(r"[a-z0-9'-]+", text)
    flt = {"shape": None, "color": None, "size": None}
    for w in words:
        singular = w[:-2] if w.endswith("uses") else (w[:-1] if w.endswith("s") else w)
        if w in COLORS:
            flt["color"] = w
        elif w in SIZES:
            flt["size"] = SIZES[w]
        elif w in NOUNS or singular in NOUNS:
            flt["shape"] = NOUNS.get(w, NOUNS.get(singular))
    return flt


def parse(text: str) -> dict:
    t = text.lower().strip()
    for phrase, rel in RELATIONS:
        m = re.search(rf"\b{phrase}\b", t)
        if m:
            target = t[: m.start()].replace("that is", " ")
            return {"type": "relation", "filter": parse_np(target), "relation": rel,
                    "anchor": parse_np(t[m.end():])}
    m = re.search(r"(?:counting )?from the (left|right|top|bottom)", t)
    if m:
        t2 = t[: m.start()] + t[m.end():]
        rank = next(v for k, v in ORDINALS.items() if re.search(rf"\b{k}\b", t2))
        return {"type": "ordinal", "filter": parse_np(t2), "from": m.group(1), "rank": rank}
    m = re.search(r"\b(\d+|[a-z]+) o'clock", t)
    if m:
        hour = int(m.group(1)) if m.group(1).isdigit() else NUMBERS[m.group(1)]
        return {"type": "clock", "filter": parse_np(t[: m.start()] + t[m.end():]), "hour": hour}
    for word, (attribute, order) in SUPERLATIVES.items():
        if re.search(rf"\b{word}\b", t):
            return {"type": "superlative", "filter": parse_np(t.replace(word, " ")), "attribute": attribute,
                    "order": order}
    m = re.search(r"\b(top|bottom) (left|right)\b", t) or re.search(r"\b(left|right|top|bottom|middle)\b", t)
    if m:
        return {"type": "region", "filter": parse_np(t.replace(m.group(0), " ")), "region": m.group(0)}
    return {"type": "attribute", "filter": parse_np(t)}


# ---------------------------------------------------------------------------------------------------------------
# Independent evaluator over the scene's objects (dicts with shape, color, size, scale, cx, cy)

def select(query: dict, objs: list[dict], width: float, height: float) -> list[int]:
    def fits(o: dict, flt: dict) -> bool:
        return all(o[k] == v for k, v in flt.items() if v is not None)

    cand = [i for i, o in enumerate(objs) if fits(o, query["filter"])]
    kind = query["type"]
    if kind == "attribute":
        return cand
    if kind == "region":
        def where(o):
            fx, fy = o["cx"] / width, o["cy"] / height
            col = "left" if fx < 1 / 3 else ("right" if fx >= 2 / 3 else "centre")
            row = "top" if fy < 1 / 3 else ("bottom" if fy >= 2 / 3 else "centre")
            return col, row
        reg = query["region"]
        if reg == "middle":
            return [i for i in cand if where(objs[i]) == ("centre", "centre")]
        need = reg.split()
        return [i for i in cand if all(p in where(objs[i]) for p in need)]
    if kind == "clock":
        hits = []
        for i in cand:
            x = 2 * objs[i]["cx"] / width - 1
            y = 2 * objs[i]["cy"] / height - 1
            if math.sqrt(x * x + y * y) < 0.3:
                continue
            bearing = (math.degrees(math.atan2(x, -y)) + 360) % 360  # 0 = up, clockwise
            hour = int(round(bearing / 30)) % 12
            if (hour if hour else 12) == query["hour"]:
                hits.append(i)
        return hits
    if kind == "ordinal":
        sign = {"left": ("cx", 1), "right": ("cx", -1), "top": ("cy", 1), "bottom": ("cy", -1)}[query["from"]]
        order = sorted(cand, key=lambda i: sign[1] * objs[i][sign[0]])
        if len(order) < query["rank"]:
            return []
        pick = order[query["rank"] - 1]
        vals = [sign[1] * objs[i][sign[0]] for i in order]
        return [pick] if vals.count(vals[query["rank"] - 1]) == 1 else []
    if kind == "superlative":
        key = "scale" if query["attribute"] == "size" else "cy"
        vals = sorted(objs[i][key] for i in cand)
        if not vals:
            return []
        best = vals[0] if query["order"] == "min" else vals[-1]
        return [i for i in cand if objs[i][key] == best] if vals.count(best) == 1 else []
    if kind == "relation":
        anchors = [i for i, o in enumerate(objs) if fits(o, query["anchor"])]
        if len(anchors) != 1:
            return []
        a = objs[anchors[0]]
        rest = [i for i in cand if i != anchors[0]]
        rel = query["relation"]
        if rel in ("nearest", "farthest"):
            d = {i: math.dist((objs[i]["cx"], objs[i]["cy"]), (a["cx"], a["cy"])) for i in rest}
            if not d:
                return []
            best = (min if rel == "nearest" else max)(d.values())
            winners = [i for i in rest if d[i] == best]
            return winners if len(winners) == 1 else []
        out = []
        for i in rest:
            dx, dy = objs[i]["cx"] - a["cx"], objs[i]["cy"] - a["cy"]
            ok = {"left of": -dx > abs(dy), "right of": dx > abs(dy), "above": -dy > abs(dx),
                  "below": dy > abs(dx)}[rel]
            if ok:
                out.append(i)
        return out
    raise AssertionError(f"unknown query type {kind}")


def _samples(split: str, images: int, seed: int = 7, per_image: int = 3):
    for index in range(images):
        scene, image, entries, masks = make_sample(seed, split, index, per_image)
        yield scene, image, entries


# ---------------------------------------------------------------------------------------------------------------

def test_every_expression_refers_to_exactly_its_target_under_the_independent_evaluator() -> None:
    families, checked, attributes_suffice = Counter(), 0, 0
    for split in ("train", "testA", "testB"):
        for scene, _, entries in _samples(split, 40):
            objs = [o.to_dict() for o in scene.objects]
            for e in entries:
                parsed = parse(e["expression"])
                assert parsed == e["query"], (e["expression"], parsed, e["query"])
                assert select(parsed, objs, scene.width, scene.height) == [e["target"]], e["expression"]
                families[parsed["type"]] += 1
                checked += 1
                if parsed["type"] != "attribute":
                    attrs_only = select({"type": "attribute", "filter": parsed["filter"]}, objs, 1, 1)
                    attributes_suffice += len(attrs_only) == 1
    assert checked == 360
    assert set(families) == {"attribute", "region", "clock", "ordinal", "superlative", "relation"}, families
    # Locations, ordinals and relations mostly carry the reference (distractors share the named attributes).
    assert attributes_suffice < 0.15 * (checked - families["attribute"])


def test_splits_follow_the_spatial_word_rule() -> None:
    # SynthRef's words fall on the same side under both rules of data.spatial_match (no "bright", "laptop",
    # "leftish"...), so its testA/testB split does not depend on the setting.
    for split, want in (("testA", True), ("testB", False)):
        for _, _, entries in _samples(split, 30, seed=3):
            assert all(is_spatial(e["expression"]) is want for e in entries), split
            assert all(is_spatial(e["expression"], "word") is want for e in entries), split
    train = [e["expression"] for _, _, entries in _samples("train", 40, seed=3) for e in entries]
    spatial = [is_spatial(e) for e in train]
    assert spatial == [is_spatial(e, "word") for e in train]
    assert 0.25 < sum(spatial) / len(spatial) < 0.85  # train mixes both kinds


def test_boxes_are_inside_the_image_and_tight_around_the_drawn_pixels() -> None:
    for index in range(40):
        scene, image, _, masks = make_sample(11, "val", index, 1, return_masks=True)
        assert image.size == (scene.width, scene.height)
        assert min(image.size) >= 160 and max(image.size) <= 640
        for obj, (x0, y0, cover) in zip(scene.objects, masks):
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
            ys, xs = np.nonzero(cover)
            xs, ys = xs + x0, ys + y0
            # every partly covered pixel [x, x+1) x [y, y+1) overlaps the box ...
            assert (xs + 1 > x1).all() and (xs < x2).all() and (ys + 1 > y1).all() and (ys < y2).all()
            # ... and the box touches covered pixels on all four sides (tight).
            assert xs.min() == math.floor(x1) and xs.max() == math.ceil(x2) - 1
            assert ys.min() == math.floor(y1) and ys.max() == math.ceil(y2) - 1


def test_drawing_shows_the_target_colour_inside_its_box() -> None:
    # The named colour is what is drawn: the box centre pixel of an unoccluded target is near its colour.
    from lgrnet.synth.scene import COLORS as RGB

    scene, image, entries, _ = make_sample(5, "train", 0, 3)
    arr = np.asarray(image).astype(int)
    for e in entries:
        o = scene.objects[e["target"]]
        if o.shape in ("circle", "square", "hexagon"):  # solid at the centre
            later = scene.objects[e["target"] + 1:]
            if any(p.box[0] < o.cx < p.box[2] and p.box[1] < o.cy < p.box[3] for p in later):
                continue
            px = arr[int(o.cy), int(o.cx)]
            assert np.abs(px - np.array(RGB[o.color])).max() < 60


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    kwargs = {"seed": 5, "num_train": 40, "num_val": 7, "num_test": 8, "per_image": 3}
    generate(tmp_path / "a", workers=1, **kwargs)
    generate(tmp_path / "b", workers=2, **kwargs)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    generate(tmp_path / "c", workers=1, **{**kwargs, "seed": 6})
    c = _files(tmp_path / "c")
    assert c["train.jsonl"] != a["train.jsonl"]


def test_jsonl_round_trip_through_the_custom_data_reader(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    meta = generate(out, seed=1, num_train=10, num_val=5, num_test=4, per_image=3, workers=1)
    assert meta["counts"] == {"train": 10, "val": 5, "testA": 4, "testB": 4}
    assert meta["images"] == {"train": 4, "val": 2, "testA": 2, "testB": 2}
    for split, n in meta["counts"].items():
        lines = [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(lines) == n
        assert len({x["id"] for x in lines}) == n
        records = read_jsonl(out / f"{split}.jsonl")
        via_config = load_records(DataConfig(format="synth", root=str(out)), split)
        assert [r.id for r in records] == [r.id for r in via_config] == [x["id"] for x in lines]
        for line, rec in zip(lines, records):
            assert rec.split == split == line["split"]
            assert rec.expression == line["expression"]
            assert list(rec.box) == line["box"] and all(isinstance(v, float) for v in line["box"])
            assert Path(rec.image) == (out / line["image"]).resolve()
            with Image.open(rec.image) as im:
                w, h = im.size
            x1, y1, x2, y2 = rec.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert rec.source["query"] == line["query"]
    scenes = [json.loads(x) for x in (out / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == sum(meta["images"].values())


def test_cli_generates_and_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sr"
    assert cli_main(["synth", "--out", str(out), "--num-train", "6", "--num-val", "3", "--num-test", "3",
                     "--workers", "1", "--quiet"]) == 0
    assert len((out / "testB.jsonl").read_text().splitlines()) == 3
    # regenerating into a SynthRef folder replaces it
    assert cli_main(["synth", "--out", str(out), "--num-train", "3", "--num-val", "0", "--num-test", "0",
                     "--workers", "1", "--quiet"]) == 0
    assert len((out / "train.jsonl").read_text().splitlines()) == 3
    assert not list((out / "images" / "testA").iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert cli_main(["synth", "--out", str(foreign), "--num-train", "3", "--quiet"]) == 2
    assert "not a SynthRef folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_ensure_synthref_reuses_a_matching_folder_and_regenerates_otherwise(tmp_path: Path) -> None:
    from lgrnet.synth import ensure_synthref

    out = tmp_path / "cache"
    meta = ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=3, workers=1)
    stamp = (out / "val.jsonl").stat().st_mtime_ns
    assert ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=3, workers=1) == meta
    assert (out / "val.jsonl").stat().st_mtime_ns == stamp  # reused, not rewritten
    meta2 = ensure_synthref(out, seed=2, num_train=0, num_val=6, num_test=3, workers=1)
    assert meta2["counts"]["val"] == 6 and len((out / "val.jsonl").read_text().splitlines()) == 6
