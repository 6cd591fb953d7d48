"""SynthRef-G expressions: ones that refer to several objects (2-4) or to none.

Each expression comes with a query (JSON-able semantic form) in the vocabulary of :mod:`lgrnet.synth.grammar`
and is kept only when the query's crisp semantics (:func:`evaluate_set`) select exactly the intended set, with
margins: every member satisfies the predicate clearly and every other candidate clearly fails it.

Multi-target queries are the ``attribute``, ``region`` and ``relation`` queries of the grammar (relations: left
of / right of / above / below only) with a ``quantifier``:

* ``"the"``: a plain plural, "the red circles", "the stars on the left", "the shapes above the blue heart";
* ``"all"``: "all the red shapes", "all the squares";
* ``"count"`` with ``count`` n (2-4): "the two circles", "both triangles", "the three red shapes". The count is a
  presupposition: the query selects its set only when the set has exactly n members (else nothing).

The set of a plural query is what the grammar's ``evaluate`` selects for the same query read as a set: the
candidates (objects matching the filter), of them those whose centre lies in the region, or (relations) those
other than the anchor whose centre lies within 45 degrees of the direction from the anchor's centre.

No-target queries are ordinary singular queries that select nothing:

* ``attribute``: a colour/shape/size combination that no object has ("the purple star" with no purple star,
  "the large heart" when every heart is small), all words from the grammar's vocabulary;
* ``region``: "the circle on the left" when every circle is clearly outside the left third and, for a side,
  clearly in the other half of the image (no "leftmost of the circles" reading); for a corner, clearly away from
  it along at least one axis;
* ``relation``: "the circle left of the green square" when every candidate lies more than 100 degrees away from
  that direction (clearly on the other side of the anchor).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

from lgrnet.data.spatial import is_spatial
from lgrnet.synth.grammar import (
    _DIRECTION_ANGLE,
    REGION_NAMES,
    RELATION_WORDS,
    Query,
    _angle_diff,
    _attribute_text,
    _candidates,
    _filters_for,
    _noun_phrase,
    _offset_angle,
    _region_text,
    _relation_text,
    clearly_in_region,
    evaluate,
    shuffled_anchors,
)
from lgrnet.synth.scene import COLORS, SHAPES, Scene

__all__ = ["MAX_SET", "describe_set", "describe_none", "evaluate_set", "COUNT_WORDS"]

MAX_SET = 4  # the largest multi-target set (the generalized head has a few more prediction tokens than this)
COUNT_WORDS: dict[int, tuple[str, ...]] = {2: ("two", "both"), 3: ("three",), 4: ("four",)}
# Margins of the relation forms, in degrees between the anchor->object direction and the named direction.
MEMBER_ANGLE, OUTSIDER_ANGLE, ABSENT_ANGLE = 30.0, 60.0, 100.0
# A side region is absent only when every candidate sits this far into the other half (fraction of the side).
HALF_MARGIN = 0.05

Result = tuple[str, Query, list[int]]


def evaluate_set(query: Query, scene: Scene) -> list[int]:
    """The set a query selects: :func:`lgrnet.synth.grammar.evaluate`, with a ``count`` quantifier selecting its
    set only when the set has exactly ``count`` members."""
    selected = evaluate(query, scene)
    if query.get("quantifier") == "count" and len(selected) != query["count"]:
        return []
    return selected


# ---------------------------------------------------------------------------------------------------------------
# Wording of plural forms

def _quantifier(rng: random.Random, size: int, allow_plain: bool) -> dict:
    """A quantifier for a set of ``size`` objects: a count (always the set's size), "all" or a plain plural."""
    options = [{"quantifier": "count", "count": size}, {"quantifier": "all"}]
    if allow_plain:
        options.append({"quantifier": "the"})
    return rng.choice(options)


def _plural_np(rng: random.Random, flt: dict, quant: dict) -> str:
    """'the two red circles', 'both triangles', 'all the squares', 'the large stars'."""
    np_ = _noun_phrase(rng, flt, plural=True)
    if quant["quantifier"] == "all":
        return rng.choice([f"all the {np_}", f"all {np_}", f"all of the {np_}"])
    if quant["quantifier"] == "count":
        word = rng.choice(COUNT_WORDS[quant["count"]])
        if word == "both":
            return rng.choice([f"both {np_}", f"both of the {np_}", f"both the {np_}"])
        return f"the {word} {np_}"
    return f"the {np_}"


def _plural_region_text(rng: random.Random, flt: dict, region: str, quant: dict) -> str:
    head = _plural_np(rng, flt, quant)
    if region == "middle":
        forms = [f"{head} in the middle", f"{head} in the middle of the picture"]
    elif " " in region:
        forms = [f"{head} in the {region} corner", f"{head} at the {region}"]
    else:
        side = "on the" if region in ("left", "right") else "at the"
        forms = [f"{head} {side} {region}", f"{head} on the {region} side"]
        if quant["quantifier"] == "the":
            forms.append(f"the {region} {_noun_phrase(rng, flt, plural=True)}")
    return rng.choice(forms)


def _plural_relation_text(rng: random.Random, flt: dict, rel: str, anchor: dict, quant: dict) -> str:
    head, rw = _plural_np(rng, flt, quant), rng.choice(RELATION_WORDS[rel])
    anchor_np = "the " + _noun_phrase(rng, anchor)
    if rng.random() < 0.25:
        return f"{head} that are {rw} {anchor_np}"
    return f"{head} {rw} {anchor_np}"


# ---------------------------------------------------------------------------------------------------------------
# Multi-target families: each returns (text, query, members) or None

def _scene_filters(scene: Scene, exclude: int | None = None) -> list[dict]:
    """Every distinct attribute filter that describes some object (except ``exclude``), generic one included."""
    seen, out = set(), []
    for i, obj in enumerate(scene.objects):
        if i == exclude:
            continue
        for flt in _filters_for(obj):
            key = (flt["shape"], flt["color"], flt["size"])
            if key not in seen:
                seen.add(key)
                out.append(flt)
    return out


def _specificity(flt: dict) -> int:
    return sum(v is not None for v in flt.values())


def _multi_attribute(rng: random.Random, scene: Scene) -> Result | None:
    by_set: dict[tuple[int, ...], list[dict]] = {}
    for flt in _scene_filters(scene):
        members = tuple(_candidates(scene, flt))
        if 2 <= len(members) <= MAX_SET:
            by_set.setdefault(members, []).append(flt)
    # "all the shapes" / "both objects" (the whole of a small scene) only now and then.
    named = {m: [f for f in fl if _specificity(f)] for m, fl in by_set.items()}
    named = {m: fl for m, fl in named.items() if fl}
    if named and rng.random() < 0.7:
        by_set = named
    if not by_set:
        return None
    # A set size first, then a set of that size: scenes hold many more pairs than triples or quadruples.
    size = rng.choice(sorted({len(m) for m in by_set}))
    members = rng.choice(sorted(m for m in by_set if len(m) == size))
    # Mostly the shortest description of the set, sometimes an over-specified one.
    options = sorted(by_set[members], key=_specificity)
    flt = options[0] if rng.random() < 0.7 else rng.choice(options)
    quant = _quantifier(rng, len(members), allow_plain=_specificity(flt) > 0)
    query = {"type": "attribute", "filter": flt, **quant}
    return _plural_np(rng, flt, quant), query, list(members)


def _multi_region(rng: random.Random, scene: Scene) -> Result | None:
    filters = _scene_filters(scene)
    rng.shuffle(filters)
    regions = list(REGION_NAMES)
    rng.shuffle(regions)
    objs = scene.objects
    for flt in filters:
        cand = _candidates(scene, flt)
        if len(cand) < 2:
            continue
        for region in regions:
            members = [i for i in cand if clearly_in_region(objs[i], scene, region, True)]
            if not 2 <= len(members) <= MAX_SET:
                continue
            if all(clearly_in_region(objs[i], scene, region, False) for i in cand if i not in members):
                quant = _quantifier(rng, len(members), allow_plain=True)
                query = {"type": "region", "filter": flt, "region": region, **quant}
                return _plural_region_text(rng, flt, region, quant), query, members
    return None


def _relation_options(rng: random.Random, scene: Scene, relations: Sequence[str]
                      ) -> Iterator[tuple[dict, dict, str, dict[int, float]]]:
    """(anchor description, target filter, relation, {candidate: angle from the relation's direction}) in random
    order, for every anchor that a short description singles out and every filter that leaves a candidate."""
    objs = scene.objects
    anchors, rels = shuffled_anchors(rng, scene, relations)
    for a, aflt in anchors:
        filters = _scene_filters(scene, exclude=a)
        rng.shuffle(filters)
        for flt in filters:
            cand = [i for i in _candidates(scene, flt) if i != a]
            if not cand:
                continue
            for rel in rels:
                yield aflt, flt, rel, {i: _angle_diff(_offset_angle(objs[i], objs[a]), _DIRECTION_ANGLE[rel])
                                       for i in cand}


def _multi_relation(relations: Sequence[str]) -> Callable[[random.Random, Scene], Result | None]:
    def attempt(rng: random.Random, scene: Scene) -> Result | None:
        for aflt, flt, rel, angles in _relation_options(rng, scene, relations):
            members = [i for i, angle in angles.items() if angle <= MEMBER_ANGLE]
            outsiders = [i for i in angles if i not in members]
            # The relation must do some work (an outsider) and nobody may be borderline.
            if 2 <= len(members) <= MAX_SET and outsiders and all(angles[i] > OUTSIDER_ANGLE for i in outsiders):
                quant = _quantifier(rng, len(members), allow_plain=True)
                query = {"type": "relation", "filter": flt, "relation": rel, "anchor": aflt, **quant}
                return _plural_relation_text(rng, flt, rel, aflt, quant), query, members
        return None
    return attempt


# ---------------------------------------------------------------------------------------------------------------
# No-target families: each returns (text, query, []) or None

def _absent_colour(rng: random.Random, scene: Scene) -> dict | None:
    """A shape that is present, in a colour no object of that shape has (often a colour seen elsewhere)."""
    objs = scene.objects
    shape = rng.choice(objs).shape
    taken = {o.color for o in objs if o.shape == shape}
    elsewhere = sorted({o.color for o in objs} - taken)
    unseen = sorted(set(COLORS) - taken)
    pool = elsewhere if elsewhere and rng.random() < 0.6 else unseen
    return {"shape": shape, "color": rng.choice(pool), "size": None}


def _absent_size(rng: random.Random, scene: Scene) -> dict | None:
    """'the large heart' only when every such heart is small (and the reverse): medium is never far enough."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    for obj in objs:
        if obj.size == "medium":
            continue
        color = obj.color if rng.random() < 0.4 else None
        alike = [o for o in objs if o.shape == obj.shape and (color is None or o.color == color)]
        if all(o.size == obj.size for o in alike):
            return {"shape": obj.shape, "color": color, "size": "large" if obj.size == "small" else "small"}
    return None


def _absent_shape(rng: random.Random, scene: Scene) -> dict | None:
    """A shape that is not in the scene, sometimes with a colour."""
    absent = sorted(set(SHAPES) - {o.shape for o in scene.objects})
    if not absent:
        return None
    color = rng.choice(sorted(COLORS)) if rng.random() < 0.5 else None
    return {"shape": rng.choice(absent), "color": color, "size": None}


ABSENCES: tuple[tuple[Callable[[random.Random, Scene], dict | None], float], ...] = (
    (_absent_colour, 2.0), (_absent_size, 1.0), (_absent_shape, 1.0))


def _absent_attribute(rng: random.Random, scene: Scene) -> Result | None:
    for make, _ in sorted(ABSENCES, key=lambda a: -rng.random() ** (1.0 / a[1])):
        flt = make(rng, scene)
        if flt is not None:
            query = {"type": "attribute", "filter": flt}
            return _attribute_text(rng, flt), query, []
    return None


def _clearly_away(scene: Scene, i: int, region: str) -> bool:
    """Outside the region (with the grammar's margin) and, for a side, clearly in the other half; for a corner,
    clearly in the other half along at least one of its two sides."""
    obj = scene.objects[i]
    if not clearly_in_region(obj, scene, region, False):
        return False
    if region == "middle":
        return True
    fx, fy = obj.cx / scene.width, obj.cy / scene.height
    other_half = {"left": fx > 0.5 + HALF_MARGIN, "right": fx < 0.5 - HALF_MARGIN,
                  "top": fy > 0.5 + HALF_MARGIN, "bottom": fy < 0.5 - HALF_MARGIN}
    return any(other_half[side] for side in region.split())


def _absent_region(rng: random.Random, scene: Scene) -> Result | None:
    filters = _scene_filters(scene)
    rng.shuffle(filters)
    regions = list(REGION_NAMES)
    rng.shuffle(regions)
    for flt in filters:
        cand = _candidates(scene, flt)
        for region in regions:
            if all(_clearly_away(scene, i, region) for i in cand):
                query = {"type": "region", "filter": flt, "region": region}
                return _region_text(rng, flt, region), query, []
    return None


def _absent_relation(relations: Sequence[str]) -> Callable[[random.Random, Scene], Result | None]:
    def attempt(rng: random.Random, scene: Scene) -> Result | None:
        # Only filters that leave a candidate: with nothing of that kind at all it would be an attribute absence.
        for aflt, flt, rel, angles in _relation_options(rng, scene, relations):
            if all(angle > ABSENT_ANGLE for angle in angles.values()):
                query = {"type": "relation", "filter": flt, "relation": rel, "anchor": aflt}
                return _relation_text(rng, flt, rel, aflt), query, []
        return None
    return attempt


# Families: (attempt, sampling weight, whether the wording is spatial).
MULTI_FAMILIES: dict[str, tuple[Callable, float, bool]] = {
    "attribute": (_multi_attribute, 1.0, False),
    "region": (_multi_region, 0.8, True),
    "relation_lr": (_multi_relation(("left of", "right of")), 0.4, True),
    "relation": (_multi_relation(("above", "below")), 0.4, False),
}
NONE_FAMILIES: dict[str, tuple[Callable, float, bool]] = {
    "attribute": (_absent_attribute, 1.0, False),
    "region": (_absent_region, 0.5, True),
    "relation_lr": (_absent_relation(("left of", "right of")), 0.25, True),
    "relation": (_absent_relation(("above", "below")), 0.25, False),
}


def _describe(families: dict[str, tuple[Callable, float, bool]], rng: random.Random, scene: Scene,
              want_spatial: bool | None, valid: Callable[[list[int]], bool]) -> Result | None:
    names = [n for n, (_, _, sp) in families.items() if want_spatial is None or sp == want_spatial]
    order = sorted(names, key=lambda n: -rng.random() ** (1.0 / families[n][1]))  # weighted, no replacement
    for name in order:
        out = families[name][0](rng, scene)
        if out is None:
            continue
        text, query, members = out
        # The margined checks imply this; keep the guarantee explicit.
        if sorted(evaluate_set(query, scene)) != sorted(members) or not valid(members):
            continue
        if want_spatial is not None and is_spatial(text) != want_spatial:
            continue
        return out
    return None


def describe_set(rng: random.Random, scene: Scene, want_spatial: bool | None = None) -> Result | None:
    """An expression, its query and the 2-4 objects it refers to (families in a weighted random order)."""
    return _describe(MULTI_FAMILIES, rng, scene, want_spatial, lambda m: 2 <= len(m) <= MAX_SET)


def describe_none(rng: random.Random, scene: Scene, want_spatial: bool | None = None) -> Result | None:
    """An expression and its query that refer to no object of the scene."""
    return _describe(NONE_FAMILIES, rng, scene, want_spatial, lambda m: not m)
