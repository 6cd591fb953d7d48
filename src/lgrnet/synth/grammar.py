"""SynthRef referring expressions: a small grammar, its semantic form, and the uniqueness check.

Every expression is produced together with a *query*, a JSON-able semantic form, and is kept only when the query
selects exactly one object of the scene, the target. The generator is stricter than the semantics (margins): the
target must satisfy its predicate clearly and every other candidate must clearly fail it, so that a viewer (or a
model) is not left with a borderline case. The crisp semantics, which an independent evaluator re-implements in
``tests/test_synth.py``, are:

* ``filter`` {shape, color, size}: candidates are the objects matching every non-null field.
* ``attribute``: the candidates themselves.
* ``region`` (3x3 grid of the image, thirds): left/right = column 0/2, top/bottom = row 0/2, corners = both,
  middle = centre cell; of the candidates, those whose box centre lies in the region.
* ``clock``: direction of the box centre from the image centre in coordinates normalised to [-1, 1] per axis,
  clockwise from up; hour = round(angle / 30) (0 -> 12); candidates with radius >= 0.3 and that hour.
* ``ordinal``: the candidate with exactly ``rank - 1`` candidates strictly before it along the direction
  (from the left: smaller x; right: larger x; top: smaller y; bottom: larger y) and no tie.
* ``superlative``: size = ``scale``, height = y (highest = smallest y); the strict minimum / maximum.
* ``relation`` to an ``anchor`` (a filter that selects exactly one object among all): candidates other than the
  anchor; left of / right of / above / below = the offset from the anchor's centre points within 45 degrees of
  that direction; nearest / farthest = strict minimum / maximum centre distance to the anchor.

The spatial words of the paper's Table II decide the testA/testB split, through the project's one word list,
:func:`lgrnet.data.spatial.is_spatial`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from lgrnet.data.spatial import is_spatial
from lgrnet.synth.scene import Scene, SceneObject

__all__ = ["describe", "evaluate", "is_spatial", "FAMILIES"]

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "heart": ("heart",),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
}
PLURALS = {"rhombus": "rhombuses"}
GENERIC_NOUNS = ("shape", "object", "one", "thing")
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
REGION_NAMES = ("left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right", "middle")
ORDINAL_WORDS = {1: ("first", "1st"), 2: ("second", "2nd"), 3: ("third", "3rd")}
HOUR_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
              9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
SUPERLATIVE_WORDS = {("size", "min"): ("smallest", "tiniest"), ("size", "max"): ("largest", "biggest"),
                     ("height", "min"): ("highest",), ("height", "max"): ("lowest",)}
RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "nearest": ("closest to", "nearest to", "next to"),
    "farthest": ("farthest from", "furthest from"),
}

# ---------------------------------------------------------------------------------------------------------------
# Crisp semantics (shared by the generator's own check)

Query = dict


def matches_filter(obj: SceneObject, flt: dict) -> bool:
    return all(v is None or getattr(obj, k) == v for k, v in flt.items())


def _region_cell(obj: SceneObject, scene: Scene) -> tuple[int, int]:
    col = 0 if obj.cx < scene.width / 3 else (2 if obj.cx >= 2 * scene.width / 3 else 1)
    row = 0 if obj.cy < scene.height / 3 else (2 if obj.cy >= 2 * scene.height / 3 else 1)
    return col, row


def _in_region(obj: SceneObject, scene: Scene, region: str) -> bool:
    col, row = _region_cell(obj, scene)
    if region == "middle":
        return col == 1 and row == 1
    ok = True
    for part in region.split():
        ok &= {"left": col == 0, "right": col == 2, "top": row == 0, "bottom": row == 2}[part]
    return ok


def _polar(obj: SceneObject, scene: Scene) -> tuple[float, float]:
    """(radius, clockwise angle from up in degrees) of the centre, in per-axis normalised coordinates."""
    u = (obj.cx - scene.width / 2) / (scene.width / 2)
    v = (obj.cy - scene.height / 2) / (scene.height / 2)
    return math.hypot(u, v), math.degrees(math.atan2(u, -v)) % 360.0


def _angle_diff(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _ordinal_key(obj: SceneObject, direction: str) -> float:
    return {"left": obj.cx, "right": -obj.cx, "top": obj.cy, "bottom": -obj.cy}[direction]


_DIRECTION_ANGLE = {"left of": 180.0, "right of": 0.0, "above": 270.0, "below": 90.0}


def _offset_angle(obj: SceneObject, anchor: SceneObject) -> float:
    """Angle of obj's centre seen from the anchor, image axes (0 = right, 90 = down), degrees."""
    return math.degrees(math.atan2(obj.cy - anchor.cy, obj.cx - anchor.cx)) % 360.0


def _distance(a: SceneObject, b: SceneObject) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


def evaluate(query: Query, scene: Scene) -> list[int]:
    """Indices of the objects the query selects under the crisp semantics (module docstring)."""
    objs = scene.objects
    cand = [i for i, o in enumerate(objs) if matches_filter(o, query["filter"])]
    kind = query["type"]
    if kind == "attribute":
        return cand
    if kind == "region":
        return [i for i in cand if _in_region(objs[i], scene, query["region"])]
    if kind == "clock":
        out = []
        for i in cand:
            r, ang = _polar(objs[i], scene)
            hour = round(ang / 30.0) % 12 or 12
            if r >= 0.3 and hour == query["hour"]:
                out.append(i)
        return out
    if kind == "ordinal":
        keys = [_ordinal_key(objs[i], query["from"]) for i in cand]
        return [i for i, k in zip(cand, keys)
                if sum(x < k for x in keys) == query["rank"] - 1 and keys.count(k) == 1]
    if kind == "superlative":
        keys = [objs[i].scale if query["attribute"] == "size" else objs[i].cy for i in cand]
        if not keys:
            return []
        best = min(keys) if query["order"] == "min" else max(keys)
        return [i for i, k in zip(cand, keys) if k == best] if keys.count(best) == 1 else []
    if kind == "relation":
        anchors = [i for i, o in enumerate(objs) if matches_filter(o, query["anchor"])]
        if len(anchors) != 1:
            return []
        a = objs[anchors[0]]
        cand = [i for i in cand if i != anchors[0]]
        rel = query["relation"]
        if rel in _DIRECTION_ANGLE:
            return [i for i in cand if _angle_diff(_offset_angle(objs[i], a), _DIRECTION_ANGLE[rel]) < 45.0]
        dists = [_distance(objs[i], a) for i in cand]
        if not dists:
            return []
        best = min(dists) if rel == "nearest" else max(dists)
        return [i for i, d in zip(cand, dists) if d == best] if dists.count(best) == 1 else []
    raise ValueError(f"unknown query type {kind!r}")


# ---------------------------------------------------------------------------------------------------------------
# Margined checks: the target clearly satisfies the predicate and every other candidate clearly fails it.

def _candidates(scene: Scene, flt: dict) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if matches_filter(o, flt)]


def clearly_in_region(obj: SceneObject, scene: Scene, region: str, inside: bool) -> bool:
    """True when ``obj``'s centre is inside (or outside) the region even if moved by 5% of the image's width
    and height in any direction: nothing close to a region's border."""
    mx, my = 0.05 * scene.width, 0.05 * scene.height
    shifts = [(dx, dy) for dx in (-mx, 0, mx) for dy in (-my, 0, my)]
    pts = [SceneObject(obj.shape, obj.color, obj.size, obj.scale, obj.cx + dx, obj.cy + dy, obj.box)
           for dx, dy in shifts]
    return all(_in_region(p, scene, region) == inside for p in pts)


def _check_region(scene: Scene, cand: list[int], t: int, region: str) -> bool:
    objs = scene.objects
    if not clearly_in_region(objs[t], scene, region, True):
        return False
    if not all(clearly_in_region(objs[i], scene, region, False) for i in cand if i != t):
        return False
    # "the circle on the left" also reads as a relative extreme: the target must be the extreme candidate.
    if region in ("left", "right", "top", "bottom"):
        return all(_ordinal_key(objs[i], region) > _ordinal_key(objs[t], region) for i in cand if i != t)
    return True


def _check_clock(scene: Scene, cand: list[int], t: int, hour: int) -> bool:
    r, ang = _polar(scene.objects[t], scene)
    if r < 0.45 or _angle_diff(ang, hour % 12 * 30.0) > 9.0:
        return False
    for i in cand:
        if i != t:
            ri, ai = _polar(scene.objects[i], scene)
            if ri >= 0.22 and _angle_diff(ai, hour % 12 * 30.0) < 24.0:
                return False
    return True


def _check_ordinal(scene: Scene, cand: list[int], t: int, direction: str) -> int | None:
    """The target's rank (1-3) if its neighbours along the direction are clearly apart, else None."""
    if len(cand) < 2:
        return None
    extent = scene.width if direction in ("left", "right") else scene.height
    keys = sorted((_ordinal_key(scene.objects[i], direction), i) for i in cand)
    rank = [i for _, i in keys].index(t) + 1
    if rank > 3:
        return None
    for j in (rank - 2, rank - 1):  # gaps (j, j + 1) to the previous and to the next candidate
        if j >= 0 and j + 1 < len(keys) and keys[j + 1][0] - keys[j][0] < 0.08 * extent:
            return None
    return rank


def _check_superlative(scene: Scene, cand: list[int], t: int, attribute: str, order: str) -> bool:
    if len(cand) < 2:
        return False
    objs = scene.objects
    for i in cand:
        if i == t:
            continue
        if attribute == "size":
            ratio = objs[i].scale / objs[t].scale
            if (order == "min" and ratio < 1.25) or (order == "max" and ratio > 1 / 1.25):
                return False
        else:
            gap = (objs[i].cy - objs[t].cy) if order == "min" else (objs[t].cy - objs[i].cy)
            if gap < 0.08 * scene.height:
                return False
    return True


def _check_relation(scene: Scene, cand: list[int], t: int, a: int, rel: str) -> bool:
    objs = scene.objects
    others = [i for i in cand if i not in (t, a)]
    if t == a or len(others) == 0:
        return False  # with no other candidate the relation adds nothing
    if rel in _DIRECTION_ANGLE:
        if _angle_diff(_offset_angle(objs[t], objs[a]), _DIRECTION_ANGLE[rel]) > 30.0:
            return False
        return all(_angle_diff(_offset_angle(objs[i], objs[a]), _DIRECTION_ANGLE[rel]) > 60.0 for i in others)
    dt = _distance(objs[t], objs[a])
    if rel == "nearest":
        return all(_distance(objs[i], objs[a]) > 1.4 * dt for i in others)
    return all(_distance(objs[i], objs[a]) * 1.4 < dt for i in others)


# ---------------------------------------------------------------------------------------------------------------
# Wording

def _noun(rng: random.Random, shape: str | None, plural: bool = False) -> str:
    if shape is None:
        word = rng.choice(GENERIC_NOUNS[:2] if plural else GENERIC_NOUNS)
    else:
        word = rng.choice(SHAPE_WORDS[shape])
    if plural:
        return PLURALS.get(word, word + "s")
    return word


def _noun_phrase(rng: random.Random, flt: dict, plural: bool = False) -> str:
    """Adjectives then noun, no article: 'large red circle', 'green one'."""
    words = []
    if flt.get("size"):
        words.append(rng.choice(SIZE_WORDS[flt["size"]]))
    if flt.get("color"):
        words.append(flt["color"])
    shape = flt.get("shape")
    noun = _noun(rng, shape, plural)
    if noun == "one" and not words:
        noun = "shape"  # a bare "the one" says nothing
    return " ".join([*words, noun])


def _the(rng: random.Random, p: float = 0.8) -> str:
    return "the " if rng.random() < p else ""


def _attribute_text(rng: random.Random, flt: dict) -> str:
    if flt.get("shape") and flt.get("color") and rng.random() < 0.2:
        rest = {"shape": flt["shape"], "size": flt.get("size"), "color": None}
        return f"{_the(rng)}{_noun_phrase(rng, rest)} that is {flt['color']}"
    return _the(rng) + _noun_phrase(rng, flt)


def _region_text(rng: random.Random, flt: dict, region: str) -> str:
    np_ = _noun_phrase(rng, flt)
    if region == "middle":
        forms = [f"the {np_} in the middle", f"the middle {np_}", f"{np_} in the middle of the picture"]
    elif " " in region:
        forms = [f"the {np_} in the {region} corner", f"the {np_} at the {region}", f"{region} {np_}",
                 f"the {region} {np_}"]
    else:
        side = "on the" if region in ("left", "right") else "at the"
        forms = [f"the {np_} {side} {region}", f"the {region} {np_}", f"{np_} {side} {region}",
                 f"the {np_} on the {region} side"]
    return rng.choice(forms)


def _clock_text(rng: random.Random, flt: dict, hour: int) -> str:
    np_ = _noun_phrase(rng, flt)
    h = str(hour) if rng.random() < 0.7 else HOUR_WORDS[hour]
    return rng.choice([f"the {np_} at {h} o'clock", f"{np_} at {h} o'clock", f"the {np_} in the {h} o'clock position",
                       f"the {h} o'clock {np_}"])


def _ordinal_text(rng: random.Random, flt: dict, rank: int, direction: str) -> str:
    np_, ordw = _noun_phrase(rng, flt), rng.choice(ORDINAL_WORDS[rank])
    return rng.choice([f"the {ordw} {np_} from the {direction}", f"{ordw} {np_} from the {direction}",
                       f"counting from the {direction}, the {ordw} {np_}",
                       f"the {ordw} {np_} counting from the {direction}"])


def _superlative_text(rng: random.Random, flt: dict, attribute: str, order: str) -> str:
    sup = rng.choice(SUPERLATIVE_WORDS[(attribute, order)])
    if rng.random() < 0.3:
        return f"the {sup} of the {_noun_phrase(rng, flt, plural=True)}"
    return f"{_the(rng, 0.9)}{sup} {_noun_phrase(rng, flt)}"


def _relation_text(rng: random.Random, flt: dict, rel: str, anchor: dict) -> str:
    np_, rw = _noun_phrase(rng, flt), rng.choice(RELATION_WORDS[rel])
    anchor_np = "the " + _noun_phrase(rng, anchor)
    if rng.random() < 0.25:
        return f"the {np_} that is {rw} {anchor_np}"
    return f"{_the(rng)}{np_} {rw} {anchor_np}"


# ---------------------------------------------------------------------------------------------------------------
# Generation

def _filters_for(obj: SceneObject, with_size: bool = True) -> list[dict]:
    """Candidate filters describing ``obj``, from least to most specific."""
    base = [
        {"shape": obj.shape, "color": None, "size": None},
        {"shape": None, "color": obj.color, "size": None},
        {"shape": obj.shape, "color": obj.color, "size": None},
        {"shape": None, "color": None, "size": None},
    ]
    if with_size:
        base += [{"shape": obj.shape, "color": None, "size": obj.size},
                 {"shape": obj.shape, "color": obj.color, "size": obj.size}]
    return base


def _try_attribute(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
    options = [f for f in _filters_for(scene.objects[t]) if any(f.values())
               and _candidates(scene, f) == [t]]
    if not options:
        return None
    # Mostly the shortest unique description; sometimes an over-specified one (as people do in RefCOCO).
    options.sort(key=lambda f: sum(v is not None for v in f.values()))
    flt = options[0] if rng.random() < 0.7 else rng.choice(options)
    return _attribute_text(rng, flt), {"type": "attribute", "filter": flt}


def _shuffled_filters(rng: random.Random, obj: SceneObject, with_size: bool = True,
                      scene: Scene | None = None) -> list[dict]:
    """Filters in random order; with ``scene``, those that leave several candidates come first, so that the
    location (not the attributes alone) has to single the target out."""
    fl = _filters_for(obj, with_size)
    rng.shuffle(fl)
    if scene is not None:
        fl.sort(key=lambda f: len(_candidates(scene, f)) < 2)
    return fl


def _try_region(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
    regions = list(REGION_NAMES)
    rng.shuffle(regions)
    for flt in _shuffled_filters(rng, scene.objects[t], scene=scene):
        cand = _candidates(scene, flt)
        for region in regions:
            if _check_region(scene, cand, t, region):
                return _region_text(rng, flt, region), {"type": "region", "filter": flt, "region": region}
    return None


def _try_clock(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
    r, ang = _polar(scene.objects[t], scene)
    hour = round(ang / 30.0) % 12 or 12
    for flt in _shuffled_filters(rng, scene.objects[t], scene=scene):
        if _check_clock(scene, _candidates(scene, flt), t, hour):
            return _clock_text(rng, flt, hour), {"type": "clock", "filter": flt, "hour": hour}
    return None


def _try_ordinal(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
    dirs = ["left", "right", "top", "bottom"]
    rng.shuffle(dirs)
    for flt in _shuffled_filters(rng, scene.objects[t]):
        cand = _candidates(scene, flt)
        for d in dirs:
            rank = _check_ordinal(scene, cand, t, d)
            if rank is not None:
                q = {"type": "ordinal", "filter": flt, "from": d, "rank": rank}
                return _ordinal_text(rng, flt, rank, d), q
    return None


def _try_superlative(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
    kinds = [("size", "min"), ("size", "max"), ("height", "min"), ("height", "max")]
    rng.shuffle(kinds)
    for flt in _shuffled_filters(rng, scene.objects[t], with_size=False):
        cand = _candidates(scene, flt)
        for attribute, order in kinds:
            if attribute == "size" and flt["shape"] is None:
                continue  # sizes of different shape classes are not comparable at a glance
            if _check_superlative(scene, cand, t, attribute, order):
                q = {"type": "superlative", "filter": flt, "attribute": attribute, "order": order}
                return _superlative_text(rng, flt, attribute, order), q
    return None


def _anchor_filter(scene: Scene, a: int) -> dict | None:
    """The shortest attribute description that singles out object ``a`` among all objects."""
    for flt in _filters_for(scene.objects[a]):
        if flt["shape"] is not None and _candidates(scene, flt) == [a]:
            return flt
    return None


def shuffled_anchors(rng: random.Random, scene: Scene, relations: Sequence[str], exclude: int | None = None
                     ) -> tuple[list[tuple[int, dict]], list[str]]:
    """The objects (other than ``exclude``) that a short description singles out, with that description, in
    random order; and the relations in random order."""
    anchors = [a for a in range(len(scene.objects)) if a != exclude]
    rng.shuffle(anchors)
    rels = list(relations)
    rng.shuffle(rels)
    described = [(a, _anchor_filter(scene, a)) for a in anchors]
    return [(a, flt) for a, flt in described if flt is not None], rels


def _relation_tryer(relations: Sequence[str]) -> Callable:
    def attempt(rng: random.Random, scene: Scene, t: int) -> tuple[str, Query] | None:
        anchors, rels = shuffled_anchors(rng, scene, relations, exclude=t)
        for a, aflt in anchors:
            for flt in _shuffled_filters(rng, scene.objects[t]):
                cand = _candidates(scene, flt)
                for rel in rels:
                    if _check_relation(scene, cand, t, a, rel):
                        q = {"type": "relation", "filter": flt, "relation": rel, "anchor": aflt}
                        return _relation_text(rng, flt, rel, aflt), q
        return None
    return attempt


# Expression families, their sampling weights and whether their wording uses the spatial words.
FAMILIES: dict[str, tuple[Callable, float, bool]] = {
    "attribute": (_try_attribute, 1.0, False),
    "region": (_try_region, 1.0, True),
    "clock": (_try_clock, 0.9, True),
    "ordinal": (_try_ordinal, 1.0, True),
    "superlative": (_try_superlative, 0.9, False),
    "relation_lr": (_relation_tryer(("left of", "right of")), 0.5, True),
    "relation": (_relation_tryer(("above", "below", "nearest", "farthest")), 1.0, False),
}


def describe(rng: random.Random, scene: Scene, target: int, want_spatial: bool | None = None
             ) -> tuple[str, Query] | None:
    """An expression and its query that single out ``target``; families are tried in a weighted random order.
    ``want_spatial`` restricts to expressions whose wording is (True) or is not (False) spatial."""
    names = [n for n, (_, _, sp) in FAMILIES.items() if want_spatial is None or sp == want_spatial]
    # Weighted order without replacement (Efraimidis-Spirakis keys).
    order = sorted(names, key=lambda n: -rng.random() ** (1.0 / FAMILIES[n][1]))
    for name in order:
        out = FAMILIES[name][0](rng, scene, target)
        if out is None:
            continue
        text, query = out
        if evaluate(query, scene) != [target]:  # the margined checks imply this; keep the guarantee explicit
            continue
        if want_spatial is not None and is_spatial(text) != want_spatial:
            continue
        return text, query
    return None
