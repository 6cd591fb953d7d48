"""The refer API format (lichengunc/refer): ``<folder>/<dataset>/refs(<split_by>).p`` + ``instances.json``.

``refs(*.p)`` is a pickled list of refs (read with the restricted unpickler); each ref names a COCO annotation
(``ann_id``), a split and several sentences. One record per sentence; the box is the annotation's COCO
(x, y, w, h) turned into (x1, y1, x2, y2); the image file comes from ``instances.json`` (the ref's own
``file_name`` carries an ``_<ann_id>`` suffix that is not a real file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.data.records import Record
from lgrnet.errors import DataError


def refer_folder(folder: str | Path, dataset: str) -> Path:
    """``folder/dataset`` when it exists (the refer API's ``data/<dataset>/`` layout), else ``folder`` itself."""
    folder = Path(folder)
    return folder / dataset if dataset and (folder / dataset).is_dir() else folder


def read_refer(
    folder: str | Path,
    dataset: str,
    split_by: str,
    split: str | None = None,
    image_root: str | Path | None = None,
) -> list[Record]:
    """Read the sentences of one split (``None`` or ``"all"``: every split) of a refer-API dataset."""
    root = refer_folder(folder, dataset)
    refs_path = root / f"refs({split_by}).p"
    instances_path = root / "instances.json"
    if not refs_path.is_file():
        raise DataError(f"{refs_path}: refs file not found (refer API layout <folder>/{dataset}/refs({split_by}).p)")
    refs = safe_load(refs_path)
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    try:
        with open(instances_path, encoding="utf-8") as f:
            instances = json.load(f)
        boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
        files = {img["id"]: img["file_name"] for img in instances["images"]}
    except FileNotFoundError:
        raise DataError(f"{instances_path}: instances file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{instances_path}: not a COCO instances file ({type(exc).__name__}: {exc})") from None
    img_root = os.fspath(image_root) if image_root is not None else None
    records = []
    for ref in refs:
        try:
            ref_split, ann_id, image_id, ref_id = ref["split"], ref["ann_id"], ref["image_id"], ref["ref_id"]
            sentences = ref["sentences"]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{refs_path}: malformed ref {ref!r:.80} (missing {exc})") from None
        if split not in (None, "all") and ref_split != split:
            continue
        if ann_id not in boxes:
            raise DataError(f"{refs_path}: ref {ref_id} names annotation {ann_id}, absent from {instances_path}")
        if image_id not in files:
            raise DataError(f"{refs_path}: ref {ref_id} names image {image_id}, absent from {instances_path}")
        x, y, w, h = (float(v) for v in boxes[ann_id])
        image_file = files[image_id]
        for sentence in sentences:
            records.append(
                Record(
                    image=os.path.join(img_root, image_file) if img_root else image_file,
                    expression=sentence.get("sent") or sentence.get("raw", ""),
                    box=(x, y, x + w, y + h),
                    id=f"{dataset}({split_by})/{sentence.get('sent_id', f'{ref_id}_{len(records)}')}",
                    split=ref_split,
                    source={"format": "refer", "dataset": dataset, "split_by": split_by, "ref_id": ref_id,
                            "ann_id": ann_id, "category_id": ref.get("category_id")},
                )
            )
    return records
