"""The paper's "spatial expression" word list (LGR-NET, Table II) and the helpers built on it.

One place for the list: the data statistics, the engine's spatial/non-spatial metric split, the training
transform's crop choice (spec 11.3) and the SynthRef generator all use it. Matching is on whole words, so
"bright" or "topping" are not spatial while "left", "top-left" and "3 o'clock" are.
"""

from __future__ import annotations

import re

#: Table II of the paper: expressions containing one of these words count as spatial.
SPATIAL_WORDS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle", "o'clock")

# "o'clock" also appears as "oclock", "o clock" and with a typographic apostrophe.
_SPATIAL_RE = re.compile(r"\b(?:left|right|top|bottom|middle)\b|\bo(?:['\u2019]|\s)?clock\b", re.IGNORECASE)
_FLIP_RE = re.compile(r"\b(left|right|leftmost|rightmost)\b", re.IGNORECASE)
_FLIP_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


def is_spatial(expression: str) -> bool:
    """True when the expression contains a word of :data:`SPATIAL_WORDS` (whole-word, case-insensitive)."""
    return _SPATIAL_RE.search(expression) is not None


def swap_left_right(expression: str) -> str:
    """Swap the whole words left/right (and leftmost/rightmost) for a horizontal flip, keeping their case.

    Whole words only: the reference swapped substrings and turned "bright" into "bleft" (spec 15.18).
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        new = _FLIP_SWAP[word.lower()]
        if word.isupper():
            return new.upper()
        if word[0].isupper():
            return new.capitalize()
        return new

    return _FLIP_RE.sub(swap, expression)
