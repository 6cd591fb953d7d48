"""Visual Genome ``region_descriptions.json`` (the paper's pre-training data).

The file is a list of ``{"id" | "image_id": image id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
"width", "height"}, ...]}``. Images are ``<image_root>/<image_id>.jpg`` (VG_100K and VG_100K_2 merged into one
folder, or pass the right root). Regions with a non-positive size carry no target and are skipped.

Leakage guard: many VG images are COCO images, and some of them are RefCOCO/+/g val and test images (574 of the
1,500 RefCOCO val images). :func:`read_visual_genome_excluding` drops every VG image whose ``coco_id`` in VG's
``image_data.json`` (``[{"image_id" | "id", "coco_id": int | null, ...}, ...]``, found beside
``region_descriptions.json``) is the COCO image of a record of the given evaluation split files, and says what it
dropped. COCO ids are read from the split files' image names (``COCO_train2014_000000000716.jpg`` or COCO 2017's
``000000000716.jpg``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from lgrnet.data.coco import coco_image_id
from lgrnet.data.records import Record
from lgrnet.errors import DataError


def read_visual_genome(path: str | Path, image_root: str | Path | None = None, split: str = "train") -> list[Record]:
    """Read every region description as one record (all in ``split``, VG has no official REC split)."""
    return _read_regions(Path(path), image_root, split, frozenset())[0]


def _read_regions(path: Path, image_root: str | Path | None, split: str,
                  exclude_image_ids: Collection[int]) -> tuple[list[Record], int]:
    """(records, regions dropped because their image is in ``exclude_image_ids``)."""
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
    dropped = 0
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
                if img in exclude_image_ids:
                    dropped += 1
                    continue
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
    return records, dropped


@dataclass(frozen=True)
class Exclusion:
    """What the leakage guard dropped from Visual Genome."""

    split_files: tuple[str, ...]
    eval_images: int  # distinct COCO images of the evaluation splits
    images: int  # VG images dropped (their coco_id is one of those)
    regions: int  # region descriptions dropped with them

    def summary(self) -> str:
        names = ", ".join(Path(f).name for f in self.split_files)
        return (f"dropped {self.images:,} VG images ({self.regions:,} regions) that are among the {self.eval_images:,} "
                f"COCO images of {names}")


def coco_ids_of(split_file: str | Path) -> set[int]:
    """COCO image ids of the records of an evaluation split file (TransVG ``.pth`` or lgrnet ``.jsonl``)."""
    from lgrnet.data.readers.jsonl import read_jsonl
    from lgrnet.data.readers.transvg import BOX_FORMAT, read_transvg

    path = Path(split_file)
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    elif path.suffix == ".pth":
        dataset = path.parent.name
        if dataset not in BOX_FORMAT:
            raise DataError(f"{path}: a TransVG split file lies in <split_root>/<dataset>/ with dataset one of "
                            f"{', '.join(BOX_FORMAT)}")
        records = read_transvg(path.parent.parent, dataset, path.stem.removeprefix(f"{dataset}_"))
    else:
        raise DataError(f"{path}: data.exclude_images_of takes TransVG .pth or lgrnet .jsonl split files")
    ids = set()
    for record in records:
        coco_id = coco_image_id(record.image)
        if coco_id is None:
            raise DataError(f"{path}: record {record.id} image {Path(record.image).name!r} is not a COCO file name; "
                            f"only COCO-based splits can be excluded from Visual Genome")
        ids.add(coco_id)
    return ids


def vg_images_of_coco(image_data: str | Path, coco_ids: Collection[int]) -> set[int]:
    """VG image ids whose ``coco_id`` in ``image_data.json`` is in ``coco_ids``."""
    path = Path(image_data)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: Visual Genome image_data.json not found (needed by data.exclude_images_of; "
                        f"set it to [] to keep every VG image)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of image entries, got {type(entries).__name__}")
    found = set()
    for index, entry in enumerate(entries):
        try:
            coco_id = entry.get("coco_id")
            if coco_id is not None and int(coco_id) in coco_ids:
                found.add(entry["image_id"] if "image_id" in entry else entry["id"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: image entry {index} is malformed ({type(exc).__name__}: {exc})") from None
    return found


def read_visual_genome_excluding(
    path: str | Path, exclude_images_of: Sequence[str | Path], image_root: str | Path | None = None,
    split: str = "train", image_data: str | Path | None = None,
) -> tuple[list[Record], Exclusion]:
    """:func:`read_visual_genome` without the VG images that are COCO images of ``exclude_images_of``.

    ``image_data`` defaults to ``image_data.json`` beside ``path``.
    """
    path = Path(path)
    coco_ids: set[int] = set()
    for split_file in exclude_images_of:
        coco_ids |= coco_ids_of(split_file)
    vg_ids = vg_images_of_coco(image_data or path.with_name("image_data.json"), coco_ids)
    records, regions = _read_regions(path, image_root, split, vg_ids)
    return records, Exclusion(tuple(map(str, exclude_images_of)), len(coco_ids), len(vg_ids), regions)
