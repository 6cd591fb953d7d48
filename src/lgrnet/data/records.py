"""The one record type every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Record:
    """One referring expression and the box it refers to.

    ``box`` is (x1, y1, x2, y2) in pixels of the original image, as floats (sub-pixel precision kept).
    ``image`` is an absolute path, or a path relative to the reader's image root.
    """

    image: str
    expression: str
    box: tuple[float, float, float, float]
    id: str
    split: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"record {self.id}: box {self.box} is not x1<=x2, y1<=y2")
