"""Visual Genome ``region_descriptions.json`` (the paper's pre-training data).

The file is a list of ``{"id" | "image_id": image id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
"width", "height"}, ...]}``. Images are ``<image_root>/<image_id>.jpg`` (VG_100K and VG_100K_2 merged into one
folder, or pass the right root). Regions with a non-positive size carry no target and are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lgrnet.data.records import Record
from lgrnet.errors import DataError


def read_visual_genome(path: str | Path, image_root: str | Path | None = None, split: str = "train") -> list[Record]:
    """Read every region description as one record (all in ``split``, VG has no official REC split)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            images = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: region descriptions file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected a list of images with 'regions', got {type(images).__name__}")
    root = os.fspath(image_root) if image_root is not None else None
    records = []
    for index, entry in enumerate(images):
        try:
            regions = entry["regions"]
            image_id = entry.get("id", entry.get("image_id"))
            for region in regions:
                region_id = region.get("region_id", region.get("id"))
                x, y = float(region["x"]), float(region["y"])
                w, h = float(region["width"]), float(region["height"])
                if w <= 0 or h <= 0 or x < 0 or y < 0:
                    continue
                img = region.get("image_id", image_id)
                image_file = f"{img}.jpg"
                records.append(
                    Record(
                        image=os.path.join(root, image_file) if root else image_file,
                        expression=str(region["phrase"]).strip(),
                        box=(x, y, x + w, y + h),
                        id=f"vg/{region_id}",
                        split=split,
                        source={"format": "vg", "image_id": img, "region_id": region_id},
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: image entry {index} is malformed ({type(exc).__name__}: {exc})") from None
    return records
