"""Make a "household objects" referring-expression dataset in the custom JSONL format: a stand-in for your own data
to try fine-tuning on, in a domain SynthRef never shows (no geometric shapes, other nouns and other wording).

Each image (200-400 px a side by default) is a room-like background (a shaded wall, a wooden table or floor band,
grain and noise) with 2-6 pictograms of everyday objects - mugs, books, balls, lamps, chairs, apples, keys and
bottles - in eight colours, four surface patterns (plain, striped, dotted, checked), two sizes, with shading,
outlines and drop shadows. Expressions such as "the striped mug", "the book under the lamp", "the second apple from
the left", "the lowest bottle" or "the small key in the top right corner" each pick out exactly one object.

    python scripts/make_custom_dataset.py /path/to/folder
writes ``train.jsonl`` and ``val.jsonl`` (6,000 / 600 expressions over 3,000 / 300 images, about a third of them
spatial in the paper's sense), ``images/{train,val}/*.jpg`` and ``scenes.jsonl`` (one line per image: its objects
and their attributes, for checking the expressions). Train with
    lgrnet train --config configs/custom.yaml --set data.root=/path/to/folder --output-dir runs/household

Every expression is generated with a *query*, stored beside it, and kept only when the query selects exactly the
target among the image's objects under these crisp semantics (the generator adds margins, so that no case is
borderline to the eye):

* filter {kind, colour, pattern, size}: the objects matching every given field ("thing"/"object"/"item" = any kind).
* ``attribute``: the filter's objects.
* ``region``: left / right = box centre in the left / right third of the image, top / bottom = upper / lower
  third, corners = both, middle = the centre cell; of the filter's objects, those in the region.
* ``ordinal`` (rank r from a side): of the filter's objects sorted by box centre from that side, the r-th.
* ``extreme``: leftmost / rightmost / highest / lowest = strict minimum / maximum box centre along the axis
  (highest = smallest y), biggest / smallest = strict maximum / minimum box area.
* ``relation`` to an anchor (a filter that selects exactly one object): the filter's objects other than the anchor
  whose centre offset from the anchor's centre lies within 45 degrees of the direction (under/below/beneath: down,
  above/over: up, to the left/right of), or, for next to/beside/near, the one with the strictly smallest centre
  distance.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary

KINDS = ("mug", "book", "ball", "lamp", "chair", "apple", "key", "bottle")
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "mug": ("mug", "cup"), "book": ("book",), "ball": ("ball",), "lamp": ("lamp",), "chair": ("chair",),
    "apple": ("apple",), "key": ("key",), "bottle": ("bottle",),
}
GENERIC_WORDS = ("thing", "object", "item")
# width / height of each kind's box (before a little jitter)
ASPECT = {"mug": 1.0, "book": 0.75, "ball": 1.0, "lamp": 0.62, "chair": 0.72, "apple": 0.95, "key": 2.1,
          "bottle": 0.42}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (206, 40, 38), "blue": (40, 86, 200), "green": (48, 150, 60), "yellow": (236, 200, 40),
    "purple": (128, 60, 168), "orange": (240, 128, 30), "pink": (238, 126, 178), "brown": (120, 74, 40),
}
PATTERNS = ("plain", "striped", "dotted", "checked")
PATTERN_ADJECTIVES = {"plain": ("plain",), "striped": ("striped",), "dotted": ("dotted", "spotted"),
                      "checked": ("checked", "checkered")}
PATTERN_PHRASES = {"striped": "with stripes", "dotted": "with dots", "checked": "with checks"}
SIZES = ("small", "big")
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
REGIONS = ("left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right", "middle")
REGION_PHRASES = {
    "left": ("on the left",), "right": ("on the right",), "top": ("at the top",), "bottom": ("at the bottom",),
    "middle": ("in the middle",), "top left": ("in the top left corner",), "top right": ("in the top right corner",),
    "bottom left": ("in the bottom left corner",), "bottom right": ("in the bottom right corner",),
}
ORDINAL_WORDS = {1: "first", 2: "second", 3: "third"}
EXTREMES = ("leftmost", "rightmost", "highest", "lowest", "biggest", "smallest")
EXTREME_WORDS = {"leftmost": ("leftmost",), "rightmost": ("rightmost",), "highest": ("highest", "topmost"),
                 "lowest": ("lowest",), "biggest": ("biggest", "largest"), "smallest": ("smallest",)}
RELATIONS = ("under", "above", "left of", "right of", "next to")
RELATION_PHRASES = {"under": ("under", "below", "beneath"), "above": ("above", "over"),
                    "left of": ("to the left of",), "right of": ("to the right of",),
                    "next to": ("next to", "beside", "near")}
# unit vector of each directional relation, image axes (y down)
DIRECTIONS = {"under": (0.0, 1.0), "above": (0.0, -1.0), "left of": (-1.0, 0.0), "right of": (1.0, 0.0)}

# How often each expression family is tried (about a third of the expressions come out spatial).
FAMILY_WEIGHTS = {"attribute": 0.30, "relation": 0.30, "extreme": 0.15, "region": 0.15, "ordinal": 0.10}

# Margins (fractions of the image side, or ratios) that keep every kept expression clear-cut.
REGION_MARGIN = 0.04
ORDER_MARGIN = 0.06
AREA_RATIO = 1.4
ANGLE_IN, ANGLE_OUT = 35.0, 55.0  # target within ANGLE_IN of the direction, other candidates beyond ANGLE_OUT
NEAR_RATIO = 1.35


class Obj(NamedTuple):
    kind: str
    colour: str
    pattern: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


# ---------------------------------------------------------------------------------------------------------------
# Semantics (crisp) and the generator's margins


def matches(obj: Obj, flt: dict) -> bool:
    return all(flt.get(key) in (None, getattr(obj, key)) for key in ("kind", "colour", "pattern", "size"))


def in_region(obj: Obj, region: str, width: int, height: int, margin: float = 0.0) -> bool:
    """Centre in the region; a positive margin asks for it to be that far inside, a negative one that far outside
    the region's complement (used to check that distractors are clearly out)."""
    cx, cy = obj.centre[0] / width, obj.centre[1] / height
    col = "left" if cx < 1 / 3 - margin else "right" if cx > 2 / 3 + margin else (
        "centre" if 1 / 3 + margin < cx < 2 / 3 - margin else None)
    row = "top" if cy < 1 / 3 - margin else "bottom" if cy > 2 / 3 + margin else (
        "centre" if 1 / 3 + margin < cy < 2 / 3 - margin else None)
    parts = region.split()
    if region == "middle":
        return col == "centre" and row == "centre"
    if len(parts) == 2:
        return row == parts[0] and col == parts[1]
    return col == region if region in ("left", "right") else row == region


def _clearly_out(obj: Obj, region: str, width: int, height: int) -> bool:
    """The centre is at least REGION_MARGIN away from the region (on the outside)."""
    cx, cy = obj.centre[0] / width, obj.centre[1] / height
    m = REGION_MARGIN
    out_col = {"left": cx > 1 / 3 + m, "right": cx < 2 / 3 - m, "centre": cx < 1 / 3 - m or cx > 2 / 3 + m}
    out_row = {"top": cy > 1 / 3 + m, "bottom": cy < 2 / 3 - m, "centre": cy < 1 / 3 - m or cy > 2 / 3 + m}
    if region == "middle":
        return out_col["centre"] or out_row["centre"]
    parts = region.split()
    if len(parts) == 2:
        return out_row[parts[0]] or out_col[parts[1]]
    return out_col[region] if region in ("left", "right") else out_row[region]


def _angle(offset: tuple[float, float], direction: tuple[float, float]) -> float:
    norm = math.hypot(*offset)
    if norm == 0:
        return 180.0
    cos = (offset[0] * direction[0] + offset[1] * direction[1]) / norm
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _axis_key(obj: Obj, side: str) -> float:
    """Position along the axis from ``side`` (smaller = closer to that side)."""
    cx, cy = obj.centre
    return {"left": cx, "right": -cx, "top": cy, "bottom": -cy}[side]


def evaluate(query: dict, objects: list[Obj], width: int, height: int) -> list[int]:
    """Indices of the objects the query selects under the crisp semantics of the module docstring."""
    cands = [i for i, o in enumerate(objects) if matches(o, query["filter"])]
    family = query["family"]
    if family == "attribute":
        return cands
    if family == "region":
        return [i for i in cands if in_region(objects[i], query["region"], width, height)]
    if family == "ordinal":
        ordered = sorted(cands, key=lambda i: _axis_key(objects[i], query["from"]))
        rank = query["rank"]
        return [ordered[rank - 1]] if len(ordered) >= rank else []
    if family == "extreme":
        key = {"leftmost": lambda o: o.centre[0], "rightmost": lambda o: -o.centre[0],
               "highest": lambda o: o.centre[1], "lowest": lambda o: -o.centre[1],
               "biggest": lambda o: -o.area, "smallest": lambda o: o.area}[query["extreme"]]
        if not cands:
            return []
        best = min(key(objects[i]) for i in cands)
        winners = [i for i in cands if key(objects[i]) == best]
        return winners if len(winners) == 1 else []
    if family == "relation":
        anchors = [i for i, o in enumerate(objects) if matches(o, query["anchor"])]
        if len(anchors) != 1:
            return []
        anchor = objects[anchors[0]]
        others = [i for i in cands if i != anchors[0]]
        ax, ay = anchor.centre
        if query["relation"] == "next to":
            if not others:
                return []
            dist = {i: math.dist(objects[i].centre, (ax, ay)) for i in others}
            best = min(dist.values())
            winners = [i for i in others if dist[i] == best]
            return winners if len(winners) == 1 else []
        direction = DIRECTIONS[query["relation"]]
        return [i for i in others
                if _angle((objects[i].centre[0] - ax, objects[i].centre[1] - ay), direction) <= 45.0]
    raise ValueError(f"unknown family {family!r}")


def _clear(query: dict, target: int, objects: list[Obj], width: int, height: int) -> bool:
    """The generator's margins on top of the crisp semantics."""
    cands = [i for i, o in enumerate(objects) if matches(o, query["filter"])]
    family = query["family"]
    t = objects[target]
    if family == "region":
        return in_region(t, query["region"], width, height, REGION_MARGIN) and all(
            _clearly_out(objects[i], query["region"], width, height) for i in cands if i != target)
    if family in ("ordinal", "extreme"):
        if family == "extreme" and query["extreme"] in ("biggest", "smallest"):
            areas = sorted((objects[i].area for i in cands), reverse=query["extreme"] == "biggest")
            return len(areas) < 2 or (max(areas[0], areas[1]) / min(areas[0], areas[1]) >= AREA_RATIO)
        side = query["from"] if family == "ordinal" else {"leftmost": "left", "rightmost": "right",
                                                          "highest": "top", "lowest": "bottom"}[query["extreme"]]
        scale = width if side in ("left", "right") else height
        keys = sorted(_axis_key(objects[i], side) / scale for i in cands)
        return all(b - a >= ORDER_MARGIN for a, b in zip(keys, keys[1:]))
    if family == "relation":
        anchor = next(i for i, o in enumerate(objects) if matches(o, query["anchor"]))
        ax, ay = objects[anchor].centre
        others = [i for i in cands if i != anchor]
        if query["relation"] == "next to":
            dist = sorted(math.dist(objects[i].centre, (ax, ay)) for i in others)
            return len(dist) < 2 or dist[1] >= NEAR_RATIO * dist[0]
        direction = DIRECTIONS[query["relation"]]
        offsets = {i: (objects[i].centre[0] - ax, objects[i].centre[1] - ay) for i in others}
        return _angle(offsets[target], direction) <= ANGLE_IN and all(
            _angle(offsets[i], direction) >= ANGLE_OUT for i in others if i != target)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Expressions


def _unique_filters(target: int, objects: list[Obj], rng: random.Random, within: list[int] | None = None,
                    need_unique: bool = True) -> list[dict]:
    """Filters (smallest first, shuffled within a size) that match the target and, with ``need_unique``, no other
    object of ``within`` (default: all)."""
    t = objects[target]
    pool = range(len(objects)) if within is None else within
    keys = ["kind", "colour", "pattern", "size"]
    found = []
    for mask in range(1, 16):
        flt = {k: (getattr(t, k) if mask >> j & 1 else None) for j, k in enumerate(keys)}
        if flt["pattern"] == "plain" and flt["kind"] is None and sum(v is not None for v in flt.values()) == 1:
            continue  # "the plain thing" reads oddly
        others = [i for i in pool if i != target and matches(objects[i], flt)]
        if not need_unique or not others:
            found.append(flt)
    rng.shuffle(found)
    found.sort(key=lambda f: sum(v is not None for v in f.values()))
    return found


def noun_phrase(flt: dict, rng: random.Random, article: bool = True) -> str:
    """'the big red striped mug' / 'the small ball with dots' / 'the green thing'."""
    words = []
    if flt.get("size"):
        words.append(rng.choice(SIZE_WORDS[flt["size"]]))
    if flt.get("colour"):
        words.append(flt["colour"])
    pattern = flt.get("pattern")
    suffix = ""
    if pattern:
        if pattern != "plain" and rng.random() < 0.3:
            suffix = " " + PATTERN_PHRASES[pattern]
        else:
            words.append(rng.choice(PATTERN_ADJECTIVES[pattern]))
    words.append(rng.choice(KIND_WORDS[flt["kind"]]) if flt.get("kind") else rng.choice(GENERIC_WORDS))
    return ("the " if article else "") + " ".join(words) + suffix


def describe(query: dict, rng: random.Random) -> str:
    family = query["family"]
    if family == "attribute":
        return noun_phrase(query["filter"], rng)
    if family == "region":
        return f"{noun_phrase(query['filter'], rng)} {rng.choice(REGION_PHRASES[query['region']])}"
    if family == "ordinal":
        return (f"the {ORDINAL_WORDS[query['rank']]} {noun_phrase(query['filter'], rng, article=False)} "
                f"from the {query['from']}")
    if family == "extreme":
        return f"the {rng.choice(EXTREME_WORDS[query['extreme']])} {noun_phrase(query['filter'], rng, article=False)}"
    if family == "relation":
        return (f"{noun_phrase(query['filter'], rng)} {rng.choice(RELATION_PHRASES[query['relation']])} "
                f"{noun_phrase(query['anchor'], rng)}")
    raise ValueError(family)


def _propose(family: str, target: int, objects: list[Obj], width: int, height: int,
             rng: random.Random) -> dict | None:
    """A query of ``family`` selecting ``target`` (crisp and with margins), or None."""
    t = objects[target]
    kind_only = {"kind": t.kind, "colour": None, "pattern": None, "size": None}
    if family == "attribute":
        filters = _unique_filters(target, objects, rng)
        if not filters:
            return None
        # mostly the shortest description, sometimes one with an extra (redundant) word
        flt = filters[0] if rng.random() < 0.75 or len(filters) == 1 else rng.choice(filters[1:])
        return {"family": "attribute", "filter": flt}
    # the other families mostly describe the target by its kind alone (the phrase does the rest)
    filters = [kind_only] if rng.random() < 0.7 else _unique_filters(target, objects, rng, need_unique=False)[:3]
    rng.shuffle(filters)
    options: list[dict] = []
    for flt in filters:
        if family == "region":
            options += [{"family": "region", "filter": flt, "region": r} for r in REGIONS]
        elif family == "ordinal":
            options += [{"family": "ordinal", "filter": flt, "rank": r, "from": s}
                        for r in (1, 2, 3) for s in ("left", "right", "top", "bottom")]
        elif family == "extreme":
            options += [{"family": "extreme", "filter": flt, "extreme": e} for e in EXTREMES]
        elif family == "relation":
            for anchor in range(len(objects)):
                if anchor == target:
                    continue
                anchor_filters = _unique_filters(anchor, objects, rng)[:2]
                options += [{"family": "relation", "filter": flt, "relation": rel, "anchor": af}
                            for af in anchor_filters for rel in RELATIONS]
    rng.shuffle(options)
    for query in options:
        if evaluate(query, objects, width, height) != [target] or not _clear(query, target, objects, width, height):
            continue
        cands = [i for i, o in enumerate(objects) if matches(o, query["filter"])]
        # an ordinal or extreme over a single candidate, or a phrase that the filter alone already decides, says
        # nothing about space: keep such cases rare so that the spatial words matter
        if family != "attribute" and len(cands) == 1 and rng.random() < 0.8:
            continue
        return query
    return None


def expressions_for_scene(objects: list[Obj], width: int, height: int, count: int,
                          rng: random.Random) -> list[tuple[str, dict, int]]:
    """Up to ``count`` (expression, query, target) with distinct expressions, distinct targets where possible."""
    out: list[tuple[str, dict, int]] = []
    families, weights = zip(*FAMILY_WEIGHTS.items())
    targets = list(range(len(objects)))
    rng.shuffle(targets)
    used_targets: set[int] = set()
    for attempt in range(12 * count):
        if len(out) == count:
            break
        fresh = [t for t in targets if t not in used_targets]
        target = fresh[0] if fresh and attempt < 8 * count else rng.choice(targets)
        family = rng.choices(families, weights)[0]
        query = _propose(family, target, objects, width, height, rng)
        if query is None:
            continue
        expression = describe(query, rng)
        if any(e == expression for e, _, _ in out):
            continue
        out.append((expression, query, target))
        used_targets.add(target)
        targets.remove(target)
        targets.append(target)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scenes and drawing


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    if factor >= 1:
        return tuple(round(c + (255 - c) * (factor - 1)) for c in rgb)  # type: ignore[return-value]
    return tuple(round(c * factor) for c in rgb)  # type: ignore[return-value]


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 14) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def layout_scene(width: int, height: int, rng: random.Random) -> list[Obj]:
    """2-6 non-overlapping objects; few distinct kinds so that same-kind objects (which need more than a noun)
    are common."""
    count = rng.randint(2, 6)
    kind_pool = rng.sample(KINDS, rng.randint(1, min(3, count)) if count > 2 else rng.randint(1, 2))
    side = min(width, height)
    objects: list[Obj] = []
    for _ in range(count):
        for _try in range(60):
            kind = rng.choice(kind_pool) if rng.random() < 0.85 else rng.choice(KINDS)
            size = rng.choice(SIZES)
            extent = side * (rng.uniform(0.24, 0.32) if size == "big" else rng.uniform(0.14, 0.18))
            aspect = ASPECT[kind] * rng.uniform(0.92, 1.08)
            # the longer side of the box is `extent`
            w, h = (extent, extent / aspect) if aspect >= 1 else (extent * aspect, extent)
            x1, y1 = rng.uniform(3, width - w - 3), rng.uniform(3, height - h - 3)
            box = (x1, y1, x1 + w, y1 + h)
            if all(box[2] + 4 < o.box[0] or o.box[2] + 4 < box[0] or box[3] + 4 < o.box[1]
                   or o.box[3] + 4 < box[1] for o in objects):
                objects.append(Obj(kind, rng.choice(list(COLOURS)), rng.choice(PATTERNS), size,
                                   tuple(round(v, 1) for v in box)))  # type: ignore[arg-type]
                break
    return objects


def _background(width: int, height: int, rng: random.Random) -> Image.Image:
    """A shaded wall, a wooden band (table or floor) with grain, soft blotches and pixel noise."""
    wall_top = _jitter((rng.randint(170, 235), rng.randint(170, 235), rng.randint(160, 230)), rng, 0)
    wall_bottom = _shade(wall_top, rng.uniform(0.75, 0.92))
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(wall_top, wall_bottom)))
    if rng.random() < 0.5:  # wallpaper stripes or dots, faint
        tone = _shade(wall_top, 0.93)
        step = rng.randint(14, 30)
        if rng.random() < 0.5:
            for x in range(0, width, step):
                draw.line([(x, 0), (x, height)], fill=tone, width=max(1, step // 5))
        else:
            for y in range(step // 2, height, step):
                for x in range(step // 2, width, step):
                    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=tone)
    band_top = round(height * rng.uniform(0.55, 0.8))
    wood = rng.choice([(150, 100, 60), (180, 130, 80), (110, 75, 50), (200, 170, 120), (130, 130, 130)])
    draw.rectangle([0, band_top, width, height], fill=wood)
    for _ in range(rng.randint(6, 14)):  # grain
        y = rng.uniform(band_top, height)
        draw.line([(0, y), (width, y + rng.uniform(-6, 6))], fill=_shade(wood, rng.uniform(0.8, 0.95)), width=1)
    draw.line([(0, band_top), (width, band_top)], fill=_shade(wood, 0.6), width=2)
    for _ in range(rng.randint(2, 5)):  # soft light/dark blotches, blurred at a quarter of the size (faster)
        cx, cy, r = rng.uniform(0, width) / 4, rng.uniform(0, height) / 4, rng.uniform(0.1, 0.35) * width / 4
        blotch = Image.new("L", (width // 4, height // 4), 0)
        ImageDraw.Draw(blotch).ellipse([cx - r, cy - r, cx + r, cy + r], fill=rng.randint(15, 35))
        blotch = blotch.filter(ImageFilter.GaussianBlur(r / 3)).resize((width, height), Image.Resampling.BILINEAR)
        tone = (255, 255, 240) if rng.random() < 0.5 else (40, 30, 30)
        image = Image.composite(Image.new("RGB", (width, height), tone), image, blotch)
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0.0, rng.uniform(3, 7), (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def _body_mask(kind: str, w: int, h: int) -> tuple[Image.Image, list[tuple[str, list, tuple[int, int, int]]]]:
    """The coloured body of a pictogram as an L mask, and extra fixed-colour parts (drawn after, over it)."""
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    extras: list[tuple[str, list, tuple[int, int, int]]] = []
    if kind == "mug":
        d.rounded_rectangle([0, h * 0.08, w * 0.74, h - 1], radius=max(1, w * 0.08), fill=255)
        d.ellipse([w * 0.56, h * 0.25, w - 1, h * 0.75], fill=255)
        d.ellipse([w * 0.70, h * 0.37, w * 0.90, h * 0.63], fill=0)  # the handle's hole
    elif kind == "book":
        d.rectangle([0, 0, w - 1, h - 1], fill=255)
        extras.append(("rect", [w * 0.82, h * 0.04, w - 1, h * 0.96], (245, 240, 225)))  # pages
        extras.append(("rect", [0, 0, w * 0.14, h - 1], (40, 30, 30)))  # spine
    elif kind == "ball":
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
        extras.append(("arc", [-w * 0.45, h * 0.05, w * 0.55, h * 0.95], (30, 30, 30)))
        extras.append(("arc", [w * 0.45, h * 0.05, w * 1.45, h * 0.95], (30, 30, 30)))
    elif kind == "lamp":
        d.polygon([(w * 0.22, 0), (w * 0.78, 0), (w - 1, h * 0.45), (0, h * 0.45)], fill=255)
        extras.append(("rect", [w * 0.45, h * 0.45, w * 0.55, h * 0.9], (60, 60, 60)))  # stem
        extras.append(("ellipse", [w * 0.15, h * 0.86, w * 0.85, h - 1], (60, 60, 60)))  # base
    elif kind == "chair":
        d.rectangle([w * 0.05, 0, w * 0.3, h * 0.62], fill=255)  # back
        d.rectangle([w * 0.05, h * 0.5, w - 1, h * 0.64], fill=255)  # seat
        extras.append(("rect", [w * 0.06, h * 0.64, w * 0.16, h - 1], (70, 50, 35)))  # legs
        extras.append(("rect", [w * 0.86, h * 0.64, w * 0.96, h - 1], (70, 50, 35)))
    elif kind == "apple":
        d.ellipse([0, h * 0.18, w * 0.62, h - 1], fill=255)
        d.ellipse([w * 0.38, h * 0.18, w - 1, h - 1], fill=255)
        d.ellipse([w * 0.12, h * 0.25, w * 0.88, h * 0.98], fill=255)
        extras.append(("rect", [w * 0.47, 0, w * 0.55, h * 0.26], (90, 60, 30)))  # stem
        extras.append(("ellipse", [w * 0.55, h * 0.04, w * 0.85, h * 0.17], (60, 140, 50)))  # leaf
    elif kind == "key":
        d.ellipse([0, 0, w * 0.42, h - 1], fill=255)
        d.ellipse([w * 0.12, h * 0.3, w * 0.28, h * 0.7], fill=0)  # the ring's hole
        d.rectangle([w * 0.38, h * 0.38, w - 1, h * 0.62], fill=255)  # shaft
        d.rectangle([w * 0.70, h * 0.62, w * 0.78, h * 0.88], fill=255)  # teeth
        d.rectangle([w * 0.86, h * 0.62, w * 0.94, h * 0.82], fill=255)
    elif kind == "bottle":
        d.rounded_rectangle([0, h * 0.32, w - 1, h - 1], radius=max(1, w * 0.2), fill=255)
        d.rectangle([w * 0.3, h * 0.08, w * 0.7, h * 0.4], fill=255)  # neck
        extras.append(("rect", [w * 0.25, 0, w * 0.75, h * 0.1], (50, 50, 60)))  # cap
    return mask, extras


def _pattern_layer(w: int, h: int, base: tuple[int, int, int], pattern: str, rng: random.Random) -> Image.Image:
    """The body's colour, shaded from a lit top-left to a darker bottom-right, with its surface pattern."""
    light, dark = _shade(base, rng.uniform(1.05, 1.15)), _shade(base, rng.uniform(0.65, 0.8))
    layer = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(layer)
    for y in range(h):  # diagonal-ish shading: vertical gradient, then a horizontal tint below
        t = y / max(1, h - 1)
        d.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(light, base)))
    shadow = Image.linear_gradient("L").rotate(90).resize((w, h)).point(lambda v: v * 0.45)
    layer = Image.composite(Image.new("RGB", (w, h), dark), layer, shadow)
    d = ImageDraw.Draw(layer)
    ink = (250, 250, 245) if sum(base) < 420 else (45, 40, 40)
    step = max(4, round(min(w, h) / rng.uniform(3.0, 4.0)))
    if pattern == "striped":
        width = max(1, step // 3)
        if rng.random() < 0.5:
            for y in range(step // 2, h, step):
                d.line([(0, y), (w, y)], fill=ink, width=width)
        else:
            for x in range(-h, w, step):
                d.line([(x, h), (x + h, 0)], fill=ink, width=width)
    elif pattern == "dotted":
        r = max(1, step // 4)
        for row, y in enumerate(range(step // 2, h, step)):
            for x in range(step // 2 + (step // 2 if row % 2 else 0), w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif pattern == "checked":
        cell = max(3, step // 2 + 1)
        other = _shade(base, 0.6)  # darker checks: lighter ones would turn red into pink
        for row, y in enumerate(range(0, h, cell)):
            for col, x in enumerate(range(0, w, cell)):
                if (row + col) % 2:
                    d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=other)
    return layer


def draw_object(image: Image.Image, obj: Obj, rng: random.Random) -> None:
    x1, y1, x2, y2 = obj.box
    left, top = round(x1), round(y1)
    w, h = max(4, round(x2) - left), max(4, round(y2) - top)
    mask, extras = _body_mask(obj.kind, w, h)
    # drop shadow below and to the right, blurred on a tile around the object only
    pad = max(2, w // 6)
    shadow = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    shadow.paste(mask.point(lambda v: 70 if v else 0), (pad + max(1, w // 14), pad + max(1, h // 14)))
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(1, w // 18)))
    image.paste(Image.new("RGB", shadow.size, (20, 20, 20)), (left - pad, top - pad), shadow)
    body = _pattern_layer(w, h, _jitter(COLOURS[obj.colour], rng, 10), obj.pattern, rng)
    image.paste(body, (left, top), mask)
    tile = image.crop((left, top, left + w, top + h))
    d = ImageDraw.Draw(tile)
    for shape, coords, colour in extras:
        if shape == "rect":
            d.rectangle(coords, fill=colour)
        elif shape == "ellipse":
            d.ellipse(coords, fill=colour)
        elif shape == "arc":
            d.arc(coords, start=-60, end=60 if coords[0] < 0 else 240, fill=colour, width=max(1, w // 30))
    outline = mask.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 60 else 0)
    tile.paste(Image.new("RGB", (w, h), (30, 25, 25)), (0, 0), outline)
    image.paste(tile, (left, top))


def render(objects: list[Obj], width: int, height: int, rng: random.Random) -> Image.Image:
    image = _background(width, height, rng)
    for obj in objects:
        draw_object(image, obj, rng)
    return image


# ---------------------------------------------------------------------------------------------------------------
# Dataset


def make_split(out: Path, split: str, num_images: int, num_expressions: int, rng: random.Random,
               min_side: int, max_side: int, image_format: str) -> tuple[list[dict], list[dict]]:
    """Render ``num_images`` images and ``num_expressions`` expressions spread evenly over them."""
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    lines, scenes = [], []
    for index in range(num_images):
        want = num_expressions // num_images + (1 if index < num_expressions % num_images else 0)
        while True:  # a scene that cannot give `want` expressions is drawn again
            width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
            objects = layout_scene(width, height, rng)
            if len(objects) < 2:
                continue
            found = expressions_for_scene(objects, width, height, want, rng)
            if len(found) == want:
                break
        name = f"{split}_{index:05d}.{image_format}"
        image = render(objects, width, height, rng)
        image.save(image_dir / name, **({"quality": 90} if image_format == "jpg" else {}))
        rel = f"images/{split}/{name}"
        scenes.append({"image": rel, "width": width, "height": height, "objects": [o._asdict() for o in objects]})
        for k, (expression, query, target) in enumerate(found):
            lines.append({"image": rel, "expression": expression, "box": list(objects[target].box),
                          "id": f"{split}-{index:05d}-{k}", "query": query, "target": target})
    return lines, scenes


def make_dataset(out: Path, train_expressions: int = 6000, val_expressions: int = 600, images: int = 3300,
                 seed: int = 0, min_side: int = 200, max_side: int = 400, image_format: str = "jpg") -> dict:
    """Write the dataset under ``out``; returns counts (expressions, images, spatial share per split)."""
    from lgrnet.data.spatial import is_spatial

    total = train_expressions + val_expressions
    val_images = max(1, round(images * val_expressions / total))
    train_images = images - val_images
    if train_images < 1 or train_expressions < train_images or val_expressions < val_images:
        raise SystemExit("make_custom_dataset: need at least one image per split and one expression per image")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {}
    all_scenes = []
    for split, n_img, n_expr in (("train", train_images, train_expressions), ("val", val_images, val_expressions)):
        lines, scenes = make_split(out, split, n_img, n_expr, rng, min_side, max_side, image_format)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        all_scenes += scenes
        stats[split] = {"expressions": len(lines), "images": len(scenes),
                        "spatial": round(sum(is_spatial(x["expression"]) for x in lines) / len(lines), 3)}
    with open(out / "scenes.jsonl", "w", encoding="utf-8") as f:
        for scene in all_scenes:
            f.write(json.dumps(scene) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (train.jsonl, val.jsonl, images/, scenes.jsonl)")
    parser.add_argument("--train", type=int, default=6000, help="training expressions (default 6000)")
    parser.add_argument("--val", type=int, default=600, help="validation expressions (default 600)")
    parser.add_argument("--images", type=int, default=3300, help="images over both splits (default 3300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=200)
    parser.add_argument("--max-side", type=int, default=400)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    args = parser.parse_args(argv)
    if not 64 <= args.min_side <= args.max_side:
        parser.error("need 64 <= --min-side <= --max-side")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty")
    stats = make_dataset(args.out, args.train, args.val, args.images, args.seed, args.min_side, args.max_side,
                         args.format)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
