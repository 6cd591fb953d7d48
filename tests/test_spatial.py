"""The spatial rule (reference substrings by default, whole words behind ``data.spatial_match``) and the flip's
mirror of the expression: hand-written cases, counts on the real RefCOCO splits, and the users of the switch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lgrnet.data.readers import read_transvg
from lgrnet.data.records import Record
from lgrnet.data.spatial import is_spatial, swap_left_right
from lgrnet.data.stats import split_stats

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "transvg_splits"
STEMS = ("left", "right", "top", "bottom", "middle")
CLOCK_SPELLINGS = ("o'clock", "o\u2019clock", "oclock", "o clock")


@pytest.mark.parametrize(
    ("text", "substring", "word"),
    [
        ("leftmost", True, True),
        ("rightmost", True, True),
        ("topmost", True, True),
        ("leftest", True, True),
        ("Rightest guy", True, True),
        ("lefty", True, False),  # a nickname: only the reference's substring rule calls it spatial
        ("upper left", True, True),
        ("3 o'clock", True, True),
        ("the 3 o\u2019clock slice", True, True),
        ("Top-left", True, True),
        ("man on the LEFT", True, True),
        ("bright lamp", True, False),  # the reference's rule never crops "bright" expressions either
        ("a laptop", True, False),
        ("a topping", True, False),
        ("at 3oclock", True, False),  # no word boundary between the hour and "oclock"
        ("clockwise", False, False),
        ("two clocks", False, False),
        ("red car", False, False),
    ],
)
def test_spatial_rules_on_hand_written_cases(text, substring, word):
    assert is_spatial(text) is substring  # the default is the reference's substring rule
    assert is_spatial(text, "substring") is substring
    assert is_spatial(text, "word") is word


def test_unknown_spatial_match_is_refused():
    with pytest.raises(ValueError, match="'regex'"):
        is_spatial("left", "regex")  # type: ignore[arg-type]


def _substring_rule(text: str) -> bool:  # the reference's rule, plus clock positions not preceded by a letter
    return any(s in text.lower() for s in STEMS) or re.search(r"(?<![a-z])o['\u2019\s]?clock", text.lower()) is not None


WORD_FORMS = {"left", "right", "leftmost", "rightmost", "leftest", "rightest", "top", "bottom", "middle", "topmost",
              "bottommost", "middlemost", "oclock"}


def _word_rule(text: str) -> bool:  # whole tokens (runs of word characters), "o" + "clock" adjacent
    tokens = re.findall(r"\w+", text.lower())
    return bool(WORD_FORMS & set(tokens)) or re.search(r"\bo['\u2019\s]?clock\b", text.lower()) is not None


# Spatial counts of RefCOCO (unc) evaluation splits under both rules, and how many expressions only the substring
# rule calls spatial (words such as "laptop", "bright", "leftish", "ontop").
@pytest.mark.parametrize("split", ["val", "testA", "testB"])
def test_counts_on_the_refcoco_splits(split):
    expressions = [r.expression for r in read_transvg(SPLITS, "unc", split)]
    substring = [is_spatial(e) for e in expressions]
    word = [is_spatial(e, "word") for e in expressions]
    assert sum(substring) == sum(_substring_rule(e) for e in expressions)
    assert sum(word) == sum(_word_rule(e) for e in expressions)
    differ = [e for e, s, w in zip(expressions, substring, word) if s != w]
    assert len(differ) > 0
    assert all(s or not w for s, w in zip(substring, word))  # the substring rule only adds expressions
    # The reference's crop list without clock positions: every expression it protects is protected here too.
    assert all(s for e, s in zip(expressions, substring) if any(stem in e.lower() for stem in STEMS))


@pytest.mark.parametrize(
    ("text", "mirrored"),
    [
        ("the leftest man", "the rightest man"),
        ("Rightest one", "Leftest one"),
        ("LEFTMOST", "RIGHTMOST"),
        ("Left of the bright Right one", "Right of the bright Left one"),
        ("top-left corner", "top-right corner"),
        ("pizza at 3 o'clock", "pizza at 9 o'clock"),
        ("slice at 9 oclock", "slice at 3 oclock"),
        ("the 1 o clock one", "the 11 o clock one"),
        ("11 o\u2019clock", "1 o\u2019clock"),
        ("12 o'clock", "12 o'clock"),
        ("6 oclock donut", "6 oclock donut"),
        ("Three O'Clock", "Nine O'Clock"),
        ("ONE OCLOCK", "ELEVEN OCLOCK"),
        ("eleven o'clock", "one o'clock"),
        ("at 4oclock", "at 8oclock"),
        ("the 2 o'clock and the 10 o'clock", "the 10 o'clock and the 2 o'clock"),
        ("5 o'clock on the left", "7 o'clock on the right"),
        # Unchanged: not an hour, not a whole horizontal word.
        ("13 o'clock", "13 o'clock"),
        ("10 clocks on the wall", "10 clocks on the wall"),
        ("bright lefty copyright leftovers", "bright lefty copyright leftovers"),
        ("topmost bottom middle", "topmost bottom middle"),
    ],
)
def test_flip_mirrors_words_and_clock_positions(text, mirrored):
    assert swap_left_right(text) == mirrored
    assert swap_left_right(mirrored) == text  # mirroring twice is the identity


MIRRORED_HOUR = {1: 11, 2: 10, 3: 9, 4: 8, 5: 7, 6: 6, 7: 5, 8: 4, 9: 3, 10: 2, 11: 1, 12: 12}


@pytest.mark.parametrize("spelling", CLOCK_SPELLINGS)
def test_every_clock_spelling_the_rules_accept_is_mirrored(spelling):
    for hour, mirror in MIRRORED_HOUR.items():
        text = f"the slice at {hour} {spelling}"
        assert is_spatial(text) and is_spatial(text, "word")
        assert swap_left_right(text) == f"the slice at {mirror} {spelling}"


def test_flip_and_spatial_rules_agree_on_horizontal_words():
    # Every word the flip mirrors is spatial under both rules (never cropped), and every horizontal word form
    # the whole-word rule knows is mirrored by the flip.
    for stem in ("left", "right"):
        for suffix in ("", "most", "est"):
            word = stem + suffix
            assert is_spatial(word) and is_spatial(word, "word"), word
            assert swap_left_right(word) != word and swap_left_right(swap_left_right(word)) == word, word
    for word in ("topmost", "bottommost", "middlemost", "top", "bottom", "middle"):
        assert is_spatial(word, "word") and swap_left_right(word) == word


def test_stats_follow_the_switch():
    records = [Record(id=str(i), image="a.jpg", expression=e, box=(0.0, 0.0, 1.0, 1.0), split="val")
               for i, e in enumerate(["a laptop", "the man on the left", "a red car", "lefty"])]
    assert split_stats("x", records).spatial_share == pytest.approx(3 / 4)
    assert split_stats("x", records, "substring").spatial_share == pytest.approx(3 / 4)
    assert split_stats("x", records, "word").spatial_share == pytest.approx(1 / 4)


def test_cli_stats_switch(tmp_path, capsys):
    from lgrnet.cli import main

    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps({"image": "a.jpg", "expression": e, "box": [0, 0, 1, 1]}) + "\n"
                            for e in ["a laptop", "the man on the left", "a red car", "lefty"]))
    shares = {}
    for match in ("substring", "word"):
        assert main(["data", "stats", "--format", "jsonl", "--root", str(path), "--spatial-match", match]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| val"))
        shares[match] = row.strip("|").split("|")[6].strip()
    assert shares == {"substring": "75.0%", "word": "25.0%"}
