"""Which expressions are "spatial" (LGR-NET, Table II; spec 11.3), and the word swap of a horizontal flip.

One rule serves every user: the data statistics, the engine's spatial/non-spatial metric split, the training
transform's crop choice (spatial expressions are never cropped, since a crop can make "the leftmost man" false)
and the SynthRef generator. Two ways of matching, chosen by ``data.spatial_match``:

* ``"substring"`` (default, the reference's rule): the lower-cased expression contains one of the substrings
  left, right, top, bottom, middle. So "leftmost", "rightest", "topmost", "lefty" and "bright" all count, as they
  do in the reference's crop choice.
* ``"word"``: whole words only: left, right, top, bottom, middle and their superlatives leftmost, rightmost,
  leftest, rightest, topmost, bottommost, middlemost ("top-left" counts, "bright", "lefty" and "laptop" do not).

Both add clock positions ("3 o'clock", also spelled "o'clock" with a typographic apostrophe, "oclock", "o clock"),
which the reference's crop list lacks: a clock position names a place in the frame just like "top left", so a
crop can falsify it, and the paper's Table II list has it. Keeping one rule for the crop choice and the Table II
split means an expression the statistics call spatial is also one the augmentation leaves uncropped.

The flip (:func:`swap_left_right`) mirrors every horizontal word both rules accept (left/right and their
-most/-est forms) and clock positions (3 <-> 9, 1 <-> 11; 12 and 6 stay).
"""

from __future__ import annotations

import re
from typing import Literal

#: Table II of the paper: expressions containing one of these count as spatial.
SPATIAL_WORDS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle", "o'clock")
#: ``data.spatial_match`` values: the reference's substring rule or whole-word matching.
SpatialMatch = Literal["substring", "word"]
SPATIAL_MATCHES: tuple[str, ...] = ("substring", "word")

_STEMS = SPATIAL_WORDS[:-1]
# "o'clock" with a straight or typographic apostrophe, "oclock" or "o clock"; in substring mode it may follow a
# digit ("3oclock") but not a letter ("two clocks").
_CLOCK = r"o(?:['\u2019]|\s)?clock"
_SUBSTRING_CLOCK_RE = re.compile(rf"(?<![a-z]){_CLOCK}")
_WORD_RE = re.compile(
    rf"\b(?:(?:left|right)(?:most|est)?|(?:top|bottom|middle)(?:most)?)\b|\b{_CLOCK}\b", re.IGNORECASE
)

_HORIZONTAL = {"left": "right", "leftmost": "rightmost", "leftest": "rightest"}
_FLIP_SWAP = {**_HORIZONTAL, **{v: k for k, v in _HORIZONTAL.items()}}
_FLIP_RE = re.compile(r"\b(?:left|right)(?:most|est)?\b", re.IGNORECASE)
_HOUR_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
# An hour (1-12 as digits or a word) followed by an o'clock spelling, optionally without a space ("3oclock").
_CLOCK_POSITION_RE = re.compile(
    rf"\b(1[0-2]|[1-9]|{'|'.join(_HOUR_WORDS)})(\s*{_CLOCK})\b", re.IGNORECASE
)


def is_spatial(expression: str, match: SpatialMatch = "substring") -> bool:
    """True when the expression names a location in the frame (see the module docstring for the two rules)."""
    if match == "substring":
        text = expression.lower()
        return any(stem in text for stem in _STEMS) or _SUBSTRING_CLOCK_RE.search(text) is not None
    if match == "word":
        return _WORD_RE.search(expression) is not None
    raise ValueError(f"spatial match {match!r}: expected one of {', '.join(SPATIAL_MATCHES)}")


def _same_case(new: str, old: str) -> str:
    if old.isupper():
        return new.upper()
    if old[0].isupper():
        return new.capitalize()
    return new


def _mirror_hour(hour: str) -> str:
    if hour.isdigit():
        return str((12 - int(hour)) or 12)  # 12 -> 12 (not 0), 6 -> 6
    index = _HOUR_WORDS.index(hour.lower())
    return _same_case(_HOUR_WORDS[(10 - index) % 12], hour)  # hour index + 1 -> 12 - (index + 1)


def swap_left_right(expression: str) -> str:
    """Mirror an expression for a horizontal flip, keeping each word's case.

    Swaps the whole words left/right, leftmost/rightmost and leftest/rightest, and mirrors clock positions
    ("3 o'clock" <-> "9 o'clock", "one oclock" <-> "eleven oclock"; 12 and 6 unchanged). Whole words only: the
    reference swapped substrings and turned "bright" into "bleft" (spec 15.18).
    """
    swapped = _FLIP_RE.sub(lambda m: _same_case(_FLIP_SWAP[m.group(0).lower()], m.group(0)), expression)
    return _CLOCK_POSITION_RE.sub(lambda m: _mirror_hour(m.group(1)) + m.group(2), swapped)
