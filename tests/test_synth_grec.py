"""SynthRef-G: every multi- and no-target expression says what its query says and selects exactly its target set
under an independent evaluator, with no borderline object; the lines' boxes are those objects' boxes; the kinds
follow the stated shares; output is deterministic and classic SynthRef is unaffected.

The text parser and the set evaluator come from ``tests/test_synth.py`` (written from the grammar's stated
semantics, sharing no code with the generator); this file adds the plural quantifiers on top, from the semantics
stated in ``lgrnet.synth.sets``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from test_synth import NOUNS, parse, select

from lgrnet.cli import main as cli_main
from lgrnet.errors import DataError
from lgrnet.synth import ensure_synthref, generate

COUNTS = {"two": 2, "three": 3, "four": 4}
GENERIC_PLURALS = ("shapes", "objects")


def is_plural_noun(word: str) -> bool:
    if word in GENERIC_PLURALS:
        return True
    if word.endswith("uses"):  # rhombuses
        return word[:-2] in NOUNS
    return word.endswith("s") and word[:-1] in NOUNS


def parse_g(text: str) -> dict:
    """Text -> query, plural quantifiers included: 'both'/'the two..four' = a count, 'all' = all, a plural noun
    without either = a plain plural."""
    t = text.lower().strip()
    # The plural noun names the target set; relations name their anchor (always singular) after the target.
    words = re.findall(r"[a-z'-]+", t)
    plural = any(is_plural_noun(w) for w in words)
    quant: dict | None = None
    if re.search(r"\bboth\b", t):
        quant = {"quantifier": "count", "count": 2}
    elif m := re.search(r"\bthe (two|three|four)\b", t):
        quant = {"quantifier": "count", "count": COUNTS[m.group(1)]}
    elif re.search(r"\ball\b", t):
        quant = {"quantifier": "all"}
    stripped = re.sub(r"\b(?:all|both)(?: of)?\b|\b(?:two|three|four)\b", " ", t)
    query = parse(stripped)
    if plural:
        query.update(quant or {"quantifier": "the"})
    else:
        assert quant is None, f"a quantifier on a singular noun: {text!r}"
    return query


def select_set(query: dict, objs: list[dict], width: float, height: float) -> list[int]:
    """The set of the query; a count presupposes the set's size and selects nothing when it does not hold."""
    chosen = select(query, objs, width, height)
    if query.get("quantifier") == "count" and len(chosen) != query["count"]:
        return []
    return chosen


def perturbed(query: dict, objs: list[dict], width: float, height: float, absent: bool) -> list[list[dict]]:
    """Scenes in which the objects moved by a little less than the stated margins: region forms, every centre
    shifted by 4% of the image per axis; relation forms, every object turned about the anchor by 14 degrees
    (sets: members within 30 degrees of the direction, others beyond 60), or by 50 degrees for an absent
    relation (every candidate beyond 100 degrees)."""
    if query["type"] == "region":
        return [[{**o, "cx": o["cx"] + dx, "cy": o["cy"] + dy} for o in objs]
                for dx in (-0.04 * width, 0.0, 0.04 * width) for dy in (-0.04 * height, 0.0, 0.04 * height)]
    if query["type"] == "relation":
        anchor = next(o for o in objs if all(o[k] == v for k, v in query["anchor"].items() if v is not None))
        scenes = []
        for turn in (-50.0, 50.0) if absent else (-14.0, 14.0):
            c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))
            scenes.append([{**o, "cx": anchor["cx"] + c * (o["cx"] - anchor["cx"]) - s * (o["cy"] - anchor["cy"]),
                            "cy": anchor["cy"] + s * (o["cx"] - anchor["cx"]) + c * (o["cy"] - anchor["cy"])}
                           for o in objs])
        return scenes
    return []


@pytest.fixture(scope="module")
def synth_g(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthref-g") / "g"
    generate(out, seed=4, num_train=240, num_val=60, num_test=60, workers=1, grec=True)
    return out


def _lines(folder: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]


def _scenes(folder: Path) -> dict[str, dict]:
    return {s["image"]: s for s in map(json.loads, (folder / "scenes.jsonl").read_text().splitlines())}


def test_every_expression_selects_exactly_its_target_set_under_the_independent_evaluator(synth_g: Path) -> None:
    scenes = _scenes(synth_g)
    kinds, sizes, forms, checked = Counter(), Counter(), Counter(), 0
    for split in ("train", "val", "testA", "testB"):
        for line in _lines(synth_g, split):
            scene = scenes[line["image"]]
            objs, w, h = scene["objects"], scene["width"], scene["height"]
            text, query, kind = line["expression"], line["query"], line["kind"]
            if kind == "single":
                assert parse(text) == query, text
            else:
                assert parse_g(text) == query, (text, parse_g(text), query)
            chosen = select_set(query, objs, w, h)
            expected_size = {"single": (1, 1), "multi": (2, 4), "none": (0, 0)}[kind]
            assert expected_size[0] <= len(chosen) <= expected_size[1], (kind, text, chosen)
            if query.get("quantifier") == "count":
                assert query["count"] == len(chosen), text  # the count word is the set's size
            # No borderline object: a nudge smaller than the margins changes nothing.
            if kind != "single":
                for moved in perturbed(query, objs, w, h, absent=kind == "none"):
                    assert sorted(select_set(query, moved, w, h)) == sorted(chosen), text
            if kind == "none" and query["type"] == "region" and query["region"] != "middle":
                # Not even "the leftmost circle": every candidate is well into the other half (for a corner,
                # along one of its sides).
                for o in select({"type": "attribute", "filter": query["filter"]}, objs, w, h):
                    fx, fy = objs[o]["cx"] / w, objs[o]["cy"] / h
                    far = {"left": fx > 0.55, "right": fx < 0.45, "top": fy > 0.55, "bottom": fy < 0.45}
                    assert any(far[side] for side in query["region"].split()), text
            # The line's boxes are those objects' boxes, left to right; box/target only for one target.
            left_to_right = sorted(chosen, key=lambda i: (objs[i]["cx"], objs[i]["cy"], i))
            assert line["targets"] == left_to_right
            assert line["boxes"] == [objs[i]["box"] for i in left_to_right]
            if kind == "single":
                assert line["box"] == line["boxes"][0] and line["target"] == line["targets"][0]
            else:
                assert "box" not in line and "target" not in line
            kinds[kind] += 1
            sizes[len(chosen)] += 1
            forms[kind, query["type"], query.get("quantifier")] += 1
            checked += 1
    assert checked == 240 + 60 * 3
    assert kinds["multi"] and kinds["none"]
    assert {2, 3, 4} <= set(sizes) and max(sizes) <= 4
    # Every plural form and every kind of absence occurs.
    for quantifier in ("the", "all", "count"):
        assert forms["multi", "attribute", quantifier] and forms["multi", "region", quantifier], forms
    assert any(forms["multi", "relation", q] for q in ("the", "all", "count")), forms
    for family in ("attribute", "region", "relation"):
        assert forms["none", family, None], forms


def test_no_target_attributes_are_absent_combinations_of_known_words(tmp_path: Path) -> None:
    generate(tmp_path / "none", seed=8, num_train=150, num_val=0, num_test=0, workers=1, grec=True,
             grec_shares=(0.0, 0.0, 1.0))
    scenes = _scenes(tmp_path / "none")
    near_misses, by_size, checked = 0, 0, 0
    for line in _lines(tmp_path / "none", "train"):
        assert line["kind"] == "none" and line["boxes"] == [] and line["targets"] == []
        if line["query"]["type"] != "attribute":
            continue
        flt = parse_g(line["expression"])["filter"]  # the parser only knows the vocabulary's words
        objs = scenes[line["image"]]["objects"]
        assert flt["shape"] is not None
        assert not any(all(o[k] == v for k, v in flt.items() if v is not None) for o in objs)
        near_misses += any(o["shape"] == flt["shape"] for o in objs)  # the shape is there, not in that colour/size
        if flt["size"] is not None:  # a size absence: every such object has the opposite extreme size
            alike = [o for o in objs if o["shape"] == flt["shape"] and flt["color"] in (None, o["color"])]
            assert alike and {o["size"] for o in alike} == {"large" if flt["size"] == "small" else "small"}
            by_size += 1
        checked += 1
    assert checked > 50 and near_misses > 0.4 * checked and by_size >= 8, (checked, near_misses, by_size)


def test_splits_follow_the_spatial_word_rule_and_kinds_follow_the_shares(synth_g: Path) -> None:
    from lgrnet.data.spatial import is_spatial

    meta = json.loads((synth_g / "meta.json").read_text())
    total = Counter()
    for split in ("train", "val", "testA", "testB"):
        lines = _lines(synth_g, split)
        if split in ("testA", "testB"):
            assert all(is_spatial(x["expression"]) is (split == "testA") for x in lines), split
        counted = Counter(x["kind"] for x in lines)
        assert meta["kinds"][split] == {k: counted[k] for k in ("single", "multi", "none")}
        total.update(counted)
    n = sum(total.values())
    assert n == 420
    # Binomial standard deviations on 420 draws: 2.4, 2.2, 2.0 points; allow about three.
    assert abs(total["single"] / n - 0.5) < 0.075 and abs(total["multi"] / n - 0.3) < 0.07
    assert abs(total["none"] / n - 0.2) < 0.06


def test_custom_shares_and_bad_shares(tmp_path: Path) -> None:
    meta = generate(tmp_path / "multi", seed=1, num_train=12, num_val=0, num_test=0, workers=1, grec=True,
                    grec_shares=(0.0, 1.0, 0.0))
    assert meta["grec_shares"] == [0.0, 1.0, 0.0] and meta["kinds"]["train"] == {"single": 0, "multi": 12, "none": 0}
    assert {x["kind"] for x in _lines(tmp_path / "multi", "train")} == {"multi"}
    for bad in ((0.5, 0.5), (0.6, 0.3, 0.2), (1.2, -0.1, -0.1)):
        with pytest.raises(DataError, match="sum to 1"):
            generate(tmp_path / "bad", num_train=3, workers=1, grec=True, grec_shares=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_leaves_classic_synthref_as_it_was(tmp_path: Path) -> None:
    kwargs = {"seed": 5, "num_train": 18, "num_val": 3, "num_test": 3}
    generate(tmp_path / "g1", workers=1, grec=True, **kwargs)
    generate(tmp_path / "g2", workers=2, grec=True, **kwargs)
    assert _files(tmp_path / "g1") == _files(tmp_path / "g2")

    generate(tmp_path / "c", workers=1, **kwargs)
    classic_meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert classic_meta == {"generator": "synthref", "version": 1, "seed": 5, "per_image": 3, "image_format": "jpg",
                            "counts": {"train": 18, "val": 3, "testA": 3, "testB": 3},
                            "images": {"train": 6, "val": 1, "testA": 1, "testB": 1}}
    for line in _lines(tmp_path / "c", "train"):
        assert set(line) == {"id", "image", "expression", "box", "split", "query", "target"}
        assert "quantifier" not in line["query"]
    g_meta = json.loads((tmp_path / "g1" / "meta.json").read_text())
    assert g_meta["generator"] == "synthref-g" and g_meta["grec"] is True and g_meta["grec_shares"] == [0.5, 0.3, 0.2]
    # SynthRef-G draws its own scenes: no image is shared with classic SynthRef of the same seed.
    g_images, c_images = _files(tmp_path / "g1"), _files(tmp_path / "c")
    assert not any(g_images[k] == c_images[k] for k in g_images if k.startswith("images/"))


def test_ensure_synthref_keys_the_cache_on_grec_and_shares(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    classic = ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=0, workers=1)
    assert "grec" not in classic
    g = ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=0, workers=1, grec=True)
    assert g["grec"] is True and "kinds" in json.loads((out / "meta.json").read_text())
    stamp = (out / "val.jsonl").stat().st_mtime_ns
    assert ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=0, workers=1, grec=True) == g
    assert (out / "val.jsonl").stat().st_mtime_ns == stamp  # reused
    other = ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=0, workers=1, grec=True,
                            grec_shares=(0.2, 0.4, 0.4))
    assert other["grec_shares"] == [0.2, 0.4, 0.4]
    assert ensure_synthref(out, seed=2, num_train=0, num_val=3, num_test=0, workers=1) == classic  # regenerated


def test_cli_generates_synthref_g(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "g"
    assert cli_main(["synth", "--out", str(out), "--grec", "--grec-shares", "0,0,1", "--num-train", "6",
                     "--num-val", "0", "--num-test", "0", "--workers", "1", "--quiet"]) == 0
    assert "SynthRef-G" in capsys.readouterr().out
    assert all(x["kind"] == "none" and x["boxes"] == [] for x in _lines(out, "train"))
    assert cli_main(["synth", "--out", str(out), "--grec-shares", "0,0,1", "--quiet"]) == 2
    assert "--grec-shares needs --grec" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(out), "--grec", "--grec-shares", "half,half", "--quiet"]) == 2
    assert "--grec-shares" in capsys.readouterr().err


def test_lines_read_back_as_target_sets_through_the_synth_reader(synth_g: Path) -> None:
    from lgrnet.config import DataConfig
    from lgrnet.data.readers import load_records

    for split in ("val", "testB"):
        lines = _lines(synth_g, split)
        records = load_records(DataConfig(format="synth", root=str(synth_g)), split)
        assert [r.id for r in records] == [x["id"] for x in lines]
        for line, rec in zip(lines, records):
            assert [list(b) for b in rec.targets] == line["boxes"]
            assert rec.source["kind"] == line["kind"] and rec.source["query"] == line["query"]
            assert rec.box == (tuple(line["boxes"][0]) if line["boxes"] else (0.0, 0.0, 0.0, 0.0))
