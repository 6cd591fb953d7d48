"""lgrnet's own format for custom data: JSON Lines, one object per line (documented in docs/data.md).

Keys: ``image`` (path relative to the JSONL file's folder, or absolute), ``expression`` (string), ``box``
([x1, y1, x2, y2] in pixels of the original image), optional ``split`` (string) and ``id`` (string or int).
Instead of ``box``, a line may give ``boxes``: the whole target set, a list of zero, one or many boxes (generalized
REC: no-target and multi-target expressions); a line with both must have ``box`` equal to the only box.
Blank lines are ignored. Any malformed line is a ``DataError`` naming the file and the 1-based line number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from lgrnet.data.records import Record
from lgrnet.errors import DataError

REQUIRED_KEYS = ("image", "expression")
_SOURCE_KEYS = ("format", "file", "line")  # what the reader itself puts in Record.source beside a line's extras


def read_jsonl(path: str | Path, split: str | None = None) -> list[Record]:
    """Read a JSONL file. With ``split`` given, keep lines whose ``split`` equals it or that have no ``split``."""
    path = Path(path)
    base = os.fspath(path.resolve().parent)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse_line(line, path, lineno, base)
        if split is None or not record.split or record.split == split:
            records.append(record)
    return records


def _parse_line(line: str, path: Path, lineno: int, base: str) -> Record:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if "box" not in obj and "boxes" not in obj:
        missing.append("box")
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    image, expression = obj["image"], obj["expression"]
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: 'image' must be a non-empty path string")
    if not isinstance(expression, str) or not expression.strip():
        raise DataError(f"{where}: 'expression' must be a non-empty string")
    boxes = None
    if "boxes" in obj:
        if not isinstance(obj["boxes"], list):
            raise DataError(f"{where}: 'boxes' must be a list of [x1, y1, x2, y2] boxes, got {obj['boxes']!r}")
        boxes = tuple(_parse_box(b, where, "boxes") for b in obj["boxes"])
    box = _parse_box(obj["box"], where, "box") if "box" in obj else None
    if boxes is not None and box is not None and boxes != (box,):
        raise DataError(f"{where}: 'box' is given beside 'boxes', so 'boxes' must be exactly [box]")
    split = obj.get("split", "")
    if not isinstance(split, str):
        raise DataError(f"{where}: 'split' must be a string")
    rid = obj.get("id", f"{path.stem}/{lineno}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(f"{where}: 'id' must be a string or an integer")
    extra = {k: v for k, v in obj.items() if k not in (*REQUIRED_KEYS, "box", "boxes", "split", "id")}
    image = image if os.path.isabs(image) else os.path.join(base, image)
    source = {"format": "jsonl", "file": os.fspath(path), "line": lineno, **extra}
    if boxes is not None:
        return Record.with_targets(image, expression, boxes, str(rid), split, source)
    return Record(image=image, expression=expression, box=box, id=str(rid), split=split, source=source)


def _parse_box(box: object, where: str, key: str) -> tuple[float, float, float, float]:
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    ):
        raise DataError(f"{where}: '{key}' must be [x1, y1, x2, y2] with 4 finite numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise DataError(f"{where}: '{key}' {box} must have x2 > x1 and y2 > y1 (x1, y1, x2, y2 pixel corners)")
    return x1, y1, x2, y2


def record_to_json(record: Record, relative_to: str | Path | None = None, extra: bool = False) -> dict:
    """One JSONL object for ``record``; the image path is made relative to ``relative_to`` when given. With
    ``extra``, the keys a JSONL line had beyond the format's own (SynthRef's ``query``, ``target``) come back too."""
    image = record.image
    if relative_to is not None:
        image = os.path.relpath(os.path.abspath(image), os.path.abspath(relative_to))
    obj = {}
    if extra and record.source.get("format") == "jsonl":
        obj = {k: v for k, v in record.source.items() if k not in _SOURCE_KEYS}
    obj |= {"image": image, "expression": record.expression}
    if record.boxes is None or len(record.boxes) == 1:
        obj["box"] = [round(v, 4) for v in record.box]
    if record.boxes is not None:
        obj["boxes"] = [[round(v, 4) for v in b] for b in record.boxes]
    obj["id"] = record.id
    if record.split:
        obj["split"] = record.split
    return obj


def write_jsonl(records: Iterable[Record], path: str | Path, extra: bool = False) -> int:
    """Write records as JSONL with image paths relative to the output file's folder; returns the count.
    ``extra``: see :func:`record_to_json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            obj = record_to_json(record, relative_to=path.parent, extra=extra)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    return count
