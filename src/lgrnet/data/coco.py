"""COCO image ids from file names, for matching COCO-based datasets with each other and with COCO tools."""

from __future__ import annotations

import re
from pathlib import PurePath

# COCO 2014 (COCO_train2014_000000000716.jpg) and COCO 2017 (000000000716.jpg) file names.
_COCO_NAME = re.compile(r"^(?:COCO_(?:train|val|test)20\d\d_)?(\d{12})\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def coco_image_id(path: str | PurePath) -> int | None:
    """The COCO image id a file name carries (716 for ``.../COCO_train2014_000000000716.jpg``), else None."""
    match = _COCO_NAME.match(PurePath(path).name)
    return int(match.group(1)) if match else None
