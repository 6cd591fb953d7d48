"""The gRefCOCO release (GRES / GREC benchmark, Liu, Ding and Jiang, CVPR 2023): ``grefs(<split_by>).json`` +
``instances.json``.

What the release's documentation and its own loaders (the ReLA baseline's ``grefer.py`` and ``grefcoco.py``, the
GREC MDETR conversion script ``grefexp_coco_format.py``) establish, and what this reader relies on:

* Layout: ``<datasets>/grefcoco/grefs(unc).json`` and ``<datasets>/grefcoco/instances.json``; the images are
  COCO ``train2014`` (``COCO_train2014_<12 digits>.jpg``), kept anywhere (``image_root``). ``grefer.py`` also
  accepts a pickled ``grefs(unc).p`` beside it; we read that one with the restricted unpickler.
* ``grefs(unc).json`` is a JSON list of refs, refer-API style. Each ref has ``ref_id``, ``image_id``,
  ``split`` (``train``, ``val``, ``testA``, ``testB``), ``sentences`` (a list of ``{"sent", "raw", "sent_id",
  "tokens"}``), ``sent_ids``, ``file_name`` (refer-style, with an extra ``_<n>`` suffix, so not a real file:
  the image file comes from ``instances.json``), and the generalized fields:

  - ``ann_id``: a **list** of COCO annotation ids, the whole target set (one or many); ``[-1]`` for a
    no-target expression. ``grefer.py`` also tolerates a bare id, read here as a one-element list.
  - ``category_id``: the targets' categories, a list beside ``ann_id`` (``[-1]`` for no target).
  - ``no_target``: ``true`` for an expression that refers to nothing in the image (then ``ann_id == [-1]``).
    Where a ref lacks the flag it is inferred from ``ann_id == [-1]``.
* ``instances.json`` is a COCO instances file: ``images`` (``id``, ``file_name``) and ``annotations``
  (``id``, ``image_id``, ``bbox`` = x, y, w, h in pixels, ``iscrowd``). Crowd annotations named by a ref stay
  in its target set, as in the GREC conversion (the segmentation loader drops them from masks only).

One record per sentence, with the ref's target set as ``Record.boxes`` (each annotation's box x, y, w, h ->
x1, y1, x2, y2 floats, in the ref's ``ann_id`` order; empty for a no-target ref) and ``Record.box`` its first box.
Ids are ``grefcoco(<split_by>)/<ref_id>/<sent_id>``. ``Record.source`` keeps ``ref_id``, ``sent_id``,
``image_id``, ``ann_ids`` (empty for no target), ``category_ids``, ``no_target`` and ``kind`` (``single``,
``multi`` or ``none``, as SynthRef-G names them). Malformed input is a one-line :class:`DataError` naming the
file and the ref.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lgrnet.data.readers.refer import refer_folder
from lgrnet.data.readers.safe_pickle import safe_load
from lgrnet.data.records import Box, Record, target_kind
from lgrnet.errors import DataError

#: the folder the release unpacks to (``data.root`` may point at it or at the folder holding it).
GREFCOCO_FOLDER = "grefcoco"
#: ``ann_id`` (and ``category_id``) of a no-target ref.
NO_TARGET_ID = -1
_REQUIRED = ("ref_id", "image_id", "ann_id", "split", "sentences")


def grefcoco_files(folder: str | Path, split_by: str = "unc") -> tuple[Path, Path]:
    """(refs file, instances file) of a gRefCOCO folder: ``folder/grefcoco/`` when it exists, else ``folder``;
    ``grefs(<split_by>).json``, or the pickled ``grefs(<split_by>).p`` when only that one is there."""
    root = refer_folder(folder, GREFCOCO_FOLDER)
    refs_path = root / f"grefs({split_by}).json"
    if not refs_path.is_file() and (root / f"grefs({split_by}).p").is_file():
        refs_path = root / f"grefs({split_by}).p"
    return refs_path, root / "instances.json"


def read_grefcoco(
    folder: str | Path,
    split_by: str = "unc",
    split: str | None = None,
    image_root: str | Path | None = None,
) -> list[Record]:
    """Read the sentences of one split (``None`` or ``"all"``: every split) of gRefCOCO as target-set records."""
    refs_path, instances_path = grefcoco_files(folder, split_by)
    refs = _load_refs(refs_path, split_by)
    boxes, files = _load_instances(instances_path)
    img_root = os.fspath(image_root) if image_root is not None else None
    every_split = split in (None, "all")
    records: list[Record] = []
    seen_refs: set[Any] = set()
    splits: dict[str, None] = {}
    for index, ref in enumerate(refs):
        ref_id = _check_keys(ref, index, refs_path)
        if ref_id in seen_refs:
            raise DataError(f"{refs_path}: ref {ref_id} appears twice (ref ids must be unique)")
        seen_refs.add(ref_id)
        ann_ids, no_target = _target_ids(ref, ref_id, refs_path)
        ref_split = ref["split"]
        splits[str(ref_split)] = None
        if not every_split and ref_split != split:
            continue
        image_id = ref["image_id"]
        if image_id not in files:
            raise DataError(f"{refs_path}: ref {ref_id} names image {image_id}, absent from {instances_path}")
        targets = tuple(_target_box(ann_id, image_id, ref_id, boxes, refs_path, instances_path)
                        for ann_id in ann_ids)
        category_ids = ref.get("category_id")
        source = {
            "format": "grefcoco", "split_by": split_by, "ref_id": ref_id, "image_id": image_id,
            "ann_ids": list(ann_ids), "no_target": no_target,
            "category_ids": [] if no_target else list(category_ids if isinstance(category_ids, list)
                                                      else [category_ids]),
            "kind": target_kind(0 if no_target else len(ann_ids)),
        }
        image_file = files[image_id]
        image = os.path.join(img_root, image_file) if img_root else image_file
        for position, sentence in enumerate(ref["sentences"]):
            sent_id, expression = _sentence(sentence, position, ref_id, refs_path)
            records.append(Record.with_targets(
                image=image, expression=expression, boxes=targets, id=f"grefcoco({split_by})/{ref_id}/{sent_id}",
                split=ref_split, source={**source, "sent_id": sent_id},
            ))
    if not every_split and split not in splits:
        raise DataError(f"{refs_path}: no refs of split {split!r} (the file has {', '.join(splits) or 'none'})")
    return records


def _load_refs(refs_path: Path, split_by: str) -> list:
    if not refs_path.is_file():
        raise DataError(f"{refs_path}: refs file not found (gRefCOCO layout <root>/{GREFCOCO_FOLDER}/"
                        f"grefs({split_by}).json beside instances.json)")
    if refs_path.suffix == ".p":
        refs = safe_load(refs_path)
    else:
        try:
            with open(refs_path, encoding="utf-8") as f:
                refs = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{refs_path}: not a JSON file ({exc})") from None
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def _load_instances(instances_path: Path) -> tuple[dict[Any, tuple[Any, Any]], dict[Any, str]]:
    """annotation id -> (bbox, image id), and image id -> file name."""
    try:
        with open(instances_path, encoding="utf-8") as f:
            instances = json.load(f)
        boxes = {ann["id"]: (ann["bbox"], ann["image_id"]) for ann in instances["annotations"]}
        files = {img["id"]: img["file_name"] for img in instances["images"]}
    except FileNotFoundError:
        raise DataError(f"{instances_path}: instances file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{instances_path}: not a COCO instances file ({type(exc).__name__}: {exc})") from None
    return boxes, files


def _check_keys(ref: Any, index: int, refs_path: Path) -> Any:
    """The ref's id, once it has every key the reader needs."""
    if not isinstance(ref, dict):
        raise DataError(f"{refs_path}: ref #{index} is a {type(ref).__name__}, not a mapping")
    name = f"ref {ref['ref_id']}" if "ref_id" in ref else f"ref #{index}"
    missing = [key for key in _REQUIRED if key not in ref]
    if missing:
        raise DataError(f"{refs_path}: {name} has no {', '.join(missing)}")
    if not isinstance(ref["sentences"], list):
        raise DataError(f"{refs_path}: {name}: sentences must be a list, got {type(ref['sentences']).__name__}")
    return ref["ref_id"]


def _target_ids(ref: dict, ref_id: Any, refs_path: Path) -> tuple[tuple[int, ...], bool]:
    """The ref's target annotation ids (empty for no target) and its no-target flag, checked against each other."""
    raw = ref["ann_id"]
    ann_ids = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in ann_ids):
        raise DataError(f"{refs_path}: ref {ref_id}: ann_id must be annotation ids (integers), got {raw!r}")
    no_target = ref.get("no_target", ann_ids == [NO_TARGET_ID])
    if not isinstance(no_target, bool):
        raise DataError(f"{refs_path}: ref {ref_id}: no_target must be true or false, got {no_target!r}")
    real = [a for a in ann_ids if a != NO_TARGET_ID]
    if no_target:
        if real:
            raise DataError(f"{refs_path}: ref {ref_id} is marked no_target but names annotations {real}")
        return (), True
    if not real:
        raise DataError(f"{refs_path}: ref {ref_id} names no target annotation ({raw!r}) but is not marked "
                        "no_target")
    if len(real) != len(ann_ids):
        raise DataError(f"{refs_path}: ref {ref_id} mixes the no-target id -1 with annotations {real}")
    if len(set(real)) != len(real):
        raise DataError(f"{refs_path}: ref {ref_id} names an annotation twice ({real})")
    return tuple(real), False


def _target_box(ann_id: int, image_id: Any, ref_id: Any, boxes: dict[Any, tuple[Any, Any]], refs_path: Path,
                instances_path: Path) -> Box:
    if ann_id not in boxes:
        raise DataError(f"{refs_path}: ref {ref_id} names annotation {ann_id}, absent from {instances_path}")
    bbox, ann_image = boxes[ann_id]
    if ann_image != image_id:
        raise DataError(f"{refs_path}: ref {ref_id} (image {image_id}) names annotation {ann_id} of image "
                        f"{ann_image} in {instances_path}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{instances_path}: annotation {ann_id} (ref {ref_id}) has no x, y, w, h bbox "
                        f"({exc})") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise DataError(f"{instances_path}: annotation {ann_id} (ref {ref_id}) has an invalid bbox {bbox} "
                        "(x, y, w, h)")
    return (x, y, x + w, y + h)


def _sentence(sentence: Any, position: int, ref_id: Any, refs_path: Path) -> tuple[Any, str]:
    """(sent_id, expression) of one of a ref's sentences; the expression is ``sent``, else ``raw``."""
    if not isinstance(sentence, dict) or "sent_id" not in sentence:
        raise DataError(f"{refs_path}: ref {ref_id}: sentence #{position} has no sent_id")
    expression = sentence.get("sent") or sentence.get("raw")
    if not isinstance(expression, str) or not expression.strip():
        raise DataError(f"{refs_path}: ref {ref_id}: sentence {sentence['sent_id']} has no text (sent or raw)")
    return sentence["sent_id"], expression
