"""scripts/make_custom_dataset.py: the household-objects stand-in for custom data.

The expressions are checked independently of the generator: each one is parsed from its *text* with this file's
own grammar and vocabulary, evaluated with this file's own reading of the documented semantics on the objects of
``scenes.jsonl``, and must select exactly one object, whose box is the record's box. The images are checked
against the scenes (sizes, boxes inside, each object's colour present in its box).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_helpers import load_script

from lgrnet.data.readers import read_jsonl
from lgrnet.data.spatial import is_spatial

NOUNS = {"mug": "mug", "cup": "mug", "book": "book", "ball": "ball", "lamp": "lamp", "chair": "chair",
         "apple": "apple", "key": "key", "bottle": "bottle", "thing": None, "object": None, "item": None}
SIZE = {"small": "small", "little": "small", "big": "big", "large": "big"}
COLOUR = {w: w for w in ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown")}
PATTERN = {"plain": "plain", "striped": "striped", "dotted": "dotted", "spotted": "dotted", "checked": "checked",
           "checkered": "checked", "stripes": "striped", "dots": "dotted", "checks": "checked"}
# nominal body colours, written out here rather than imported
RGB = {"red": (206, 40, 38), "blue": (40, 86, 200), "green": (48, 150, 60), "yellow": (236, 200, 40),
       "purple": (128, 60, 168), "orange": (240, 128, 30), "pink": (238, 126, 178), "brown": (120, 74, 40)}

NP = r"(?:the )?[a-z -]+?"
RELATION = {"under": (0, 1), "below": (0, 1), "beneath": (0, 1), "above": (0, -1), "over": (0, -1),
            "to the left of": (-1, 0), "to the right of": (1, 0), "next to": None, "beside": None, "near": None}
REGION = {"on the left": ("left", None), "on the right": ("right", None), "at the top": (None, "top"),
          "at the bottom": (None, "bottom"), "in the middle": ("centre", "centre")}
for row in ("top", "bottom"):
    for col in ("left", "right"):
        REGION[f"in the {row} {col} corner"] = (col, row)


def parse_np(text: str) -> dict:
    """'the big striped mug' / 'the small ball with dots' -> {kind, size, colour, pattern} (absent = None)."""
    text = re.sub(r"^the ", "", text.strip())
    m = re.fullmatch(r"(.+?)(?: with (stripes|dots|checks))?", text)
    words = m.group(1).split()
    out = {"kind": None, "size": None, "colour": None, "pattern": PATTERN[m.group(2)] if m.group(2) else None}
    assert words[-1] in NOUNS, text
    out["kind"] = NOUNS[words[-1]]
    for word in words[:-1]:
        for key, table in (("size", SIZE), ("colour", COLOUR), ("pattern", PATTERN)):
            if word in table:
                assert out[key] is None, f"{key} twice in {text!r}"
                out[key] = table[word]
                break
        else:
            raise AssertionError(f"unknown word {word!r} in {text!r}")
    return out


def parse(expression: str) -> dict:
    if m := re.fullmatch(rf"the (first|second|third) ({NP}) from the (left|right|top|bottom)", expression):
        return {"op": "ordinal", "np": parse_np(m.group(2)), "rank": ("first", "second", "third").index(m.group(1)),
                "side": m.group(3)}
    if m := re.fullmatch(rf"the (leftmost|rightmost|highest|topmost|lowest|biggest|largest|smallest) ({NP})",
                         expression):
        return {"op": "extreme", "np": parse_np(m.group(2)), "word": m.group(1)}
    relations = "|".join(sorted(RELATION, key=len, reverse=True))
    if m := re.fullmatch(rf"({NP}) ({relations}) (the {NP})", expression):
        return {"op": "relation", "np": parse_np(m.group(1)), "direction": RELATION[m.group(2)],
                "anchor": parse_np(m.group(3))}
    regions = "|".join(REGION)
    if m := re.fullmatch(rf"({NP}) ({regions})", expression):
        return {"op": "region", "np": parse_np(m.group(1)), "cell": REGION[m.group(2)]}
    assert expression.startswith("the "), expression
    return {"op": "attribute", "np": parse_np(expression)}


def centre(o: dict) -> tuple[float, float]:
    x1, y1, x2, y2 = o["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def fits(o: dict, np_: dict) -> bool:
    return all(v is None or o[k] == v for k, v in np_.items())


def select(query: dict, scene: dict) -> list[int]:
    objs, width, height = scene["objects"], scene["width"], scene["height"]
    cands = [i for i, o in enumerate(objs) if fits(o, query["np"])]
    op = query["op"]
    if op == "attribute":
        return cands
    if op == "region":
        col, row = query["cell"]

        def third(v: float, size: float, low: str, high: str) -> str:
            return low if v < size / 3 else high if v > 2 * size / 3 else "centre"

        return [i for i in cands
                if (col is None or third(centre(objs[i])[0], width, "left", "right") == col)
                and (row is None or third(centre(objs[i])[1], height, "top", "bottom") == row)]
    if op == "ordinal":
        axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[query["side"]]
        keys = {i: sign * centre(objs[i])[axis] for i in cands}
        ranked = sorted(cands, key=keys.get)
        if len(ranked) <= query["rank"]:
            return []
        # a tie at that position is never an answer: every tied object comes back
        return [i for i in cands if keys[i] == keys[ranked[query["rank"]]]]
    if op == "extreme":
        def area(o: dict) -> float:
            return (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])

        value = {"leftmost": lambda o: centre(o)[0], "rightmost": lambda o: -centre(o)[0],
                 "highest": lambda o: centre(o)[1], "topmost": lambda o: centre(o)[1],
                 "lowest": lambda o: -centre(o)[1], "biggest": lambda o: -area(o), "largest": lambda o: -area(o),
                 "smallest": area}[query["word"]]
        best = min((value(objs[i]) for i in cands), default=None)
        return [i for i in cands if value(objs[i]) == best]
    anchors = [i for i, o in enumerate(objs) if fits(o, query["anchor"])]
    assert len(anchors) == 1, f"anchor {query['anchor']} is not unique"
    ax, ay = centre(objs[anchors[0]])
    others = [i for i in cands if i != anchors[0]]
    if query["direction"] is None:
        dist = {i: math.hypot(centre(objs[i])[0] - ax, centre(objs[i])[1] - ay) for i in others}
        return [i for i in others if dist[i] == min(dist.values())]
    dx, dy = query["direction"]
    chosen = []
    for i in others:
        ox, oy = centre(objs[i])[0] - ax, centre(objs[i])[1] - ay
        if (ox * dx + oy * dy) >= math.hypot(ox, oy) * math.cos(math.radians(45)) and (ox or oy):
            chosen.append(i)
    return chosen


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("household") / "data"
    script = load_script("make_custom_dataset")
    assert script.main([str(out), "--train", "48", "--val", "12", "--images", "30", "--seed", "5"]) == 0
    return out


def test_counts_format_and_split_sizes(dataset: Path) -> None:
    train, val = read_jsonl(dataset / "train.jsonl"), read_jsonl(dataset / "val.jsonl")
    assert (len(train), len(val)) == (48, 12)
    # images split in proportion to the expressions: 24 / 6, and no image is shared between the splits
    train_images, val_images = {r.image for r in train}, {r.image for r in val}
    assert (len(train_images), len(val_images)) == (24, 6)
    assert not train_images & val_images
    assert len({r.expression + r.image for r in train + val}) == 60  # no duplicate line


def test_every_expression_selects_exactly_its_box(dataset: Path) -> None:
    scenes = {s["image"]: s for s in map(json.loads, (dataset / "scenes.jsonl").read_text().splitlines())}
    assert len(scenes) == 30
    ops = set()
    for split in ("train", "val"):
        for line in map(json.loads, (dataset / f"{split}.jsonl").read_text().splitlines()):
            scene = scenes[line["image"]]
            assert 2 <= len(scene["objects"]) <= 6
            query = parse(line["expression"])
            ops.add(query["op"])
            chosen = select(query, scene)
            assert len(chosen) == 1, (line["expression"], chosen)
            assert scene["objects"][chosen[0]]["box"] == line["box"], line["expression"]
    assert ops == {"attribute", "region", "ordinal", "extreme", "relation"}


def test_spatial_share_is_about_a_third(dataset: Path) -> None:
    expressions = [r.expression for s in ("train", "val") for r in read_jsonl(dataset / f"{s}.jsonl")]
    share = sum(map(is_spatial, expressions)) / len(expressions)
    assert 0.15 <= share <= 0.55  # 60 draws of p ~ 1/3: this band is about 3 standard deviations wide


def test_images_match_their_scenes(dataset: Path) -> None:
    coloured = []  # per object: does its box show its colour (near the nominal RGB) on >= 5% of its pixels?
    for scene in map(json.loads, (dataset / "scenes.jsonl").read_text().splitlines()):
        image = Image.open(dataset / scene["image"])
        assert image.size == (scene["width"], scene["height"])
        assert min(image.size) >= 200 and max(image.size) <= 400
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        for obj in scene["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            crop = pixels[int(y1):math.ceil(y2), int(x1):math.ceil(x2)].reshape(-1, 3)
            near = np.linalg.norm(crop - np.array(RGB[obj["colour"]]), axis=1) < 70
            coloured.append(near.mean() >= 0.05)
    # shading, patterns and JPEG can leave a tiny dark key below the bar; a misplaced box or a wrong colour
    # would fail most objects
    assert np.mean(coloured) >= 0.9, np.mean(coloured)


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exc:
        load_script("make_custom_dataset").main([str(tmp_path)])
    assert exc.value.code == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_custom_yaml_fine_tunes_with_a_cosine_that_ends_at_zero() -> None:
    from lgrnet.config import load_config
    from lgrnet.engine.optim import final_lr_factor

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "custom.yaml", ["data.root=somewhere", "train.time_limit_minutes=15"])
    train = config.train
    # a time budget with a cosine schedule: the trainer points the cosine's end at the budget's last step
    assert (train.lr_schedule, train.time_limit_minutes, final_lr_factor(train)) == ("cosine", 15.0, 0.0)
    # the from-scratch preset's main rate for every group, the visual backbone included (a new domain needs new
    # visual features), and the dense region loss
    preset = load_config("lgrnet-tiny")
    for group in ("lr", "lr_visual", "lr_qda", "lr_neck_lateral"):
        assert getattr(train, group) == preset.train.lr, group
    assert preset.train.lr_visual < train.lr_visual
    assert config.loss.region_weight > 0 == preset.loss.region_weight
