"""The one record type every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Box = tuple[float, float, float, float]
#: ``Record.box`` of a record whose target set is empty (a no-target expression).
NO_BOX: Box = (0.0, 0.0, 0.0, 0.0)


def target_kind(num_targets: int) -> str:
    """``none`` / ``single`` / ``multi`` by the size of a target set (the kinds of generalized REC)."""
    return "none" if num_targets == 0 else "single" if num_targets == 1 else "multi"


@dataclass(frozen=True)
class Record:
    """One referring expression and what it refers to.

    ``box`` is (x1, y1, x2, y2) in pixels of the original image, as floats (sub-pixel precision kept).
    ``boxes`` is None for a classic record (one target: ``box``), or the whole target set of a generalized record
    (zero, one or many boxes); then ``box`` is its first box, or :data:`NO_BOX` when the set is empty.
    ``image`` is an absolute path, or a path relative to the reader's image root.
    """

    image: str
    expression: str
    box: Box
    id: str
    split: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    boxes: tuple[Box, ...] | None = None

    def __post_init__(self) -> None:
        for box in (self.box,) if self.boxes is None else self.boxes:
            x1, y1, x2, y2 = box
            if not (x2 >= x1 and y2 >= y1):
                raise ValueError(f"record {self.id}: box {box} is not x1<=x2, y1<=y2")
        if self.boxes is not None and self.box != (self.boxes[0] if self.boxes else NO_BOX):
            raise ValueError(f"record {self.id}: box {self.box} must be the first of its boxes (or {NO_BOX})")

    @property
    def targets(self) -> tuple[Box, ...]:
        """The target set: ``boxes``, or ``(box,)`` for a classic record."""
        return self.boxes if self.boxes is not None else (self.box,)

    @property
    def kind(self) -> str:
        """``single``, ``multi`` or ``none``: see :func:`target_kind`."""
        return target_kind(len(self.targets))

    @staticmethod
    def with_targets(image: str, expression: str, boxes: tuple[Box, ...], id: str, split: str = "",
                     source: dict[str, Any] | None = None) -> Record:
        """A generalized record: ``box`` follows from ``boxes`` (its first box, or :data:`NO_BOX`)."""
        boxes = tuple(tuple(float(v) for v in b) for b in boxes)
        return Record(image=image, expression=expression, box=boxes[0] if boxes else NO_BOX, id=id, split=split,
                      source=source or {}, boxes=boxes)
