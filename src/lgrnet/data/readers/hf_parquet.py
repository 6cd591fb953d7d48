"""RefCOCO, RefCOCO+ and RefCOCOg as parquet files from the Hugging Face hub (``data.format: hf-parquet``).

Read with pyarrow alone (the ``hf`` extra: ``pip install 'lgrnet[hf]'``); the ``datasets`` library is not needed.
``data.root`` is a downloaded dataset repository (any folder holding its ``*.parquet`` files, e.g. what
``huggingface-cli download --repo-type dataset lmms-lab/RefCOCO --local-dir RefCOCO`` writes) or one parquet
file. The layout is recognised from the columns; ``data.dataset`` says which dataset it is (``unc``/``refcoco``,
``unc+``/``refcoco+``, ``gref_umd``/``refcocog``, ``gref``) and asks for the standard split names (``val``,
``testA``, ``testB``, ``test``, ``train``), which are mapped to each layout's own names. Every record's box is
(x1, y1, x2, y2) in pixels of the original image, like every other reader.

Layouts (from the datasets' cards and the code that reads them; what we assumed is marked):

* ``lmms-lab`` (``lmms-lab/RefCOCO``, ``lmms-lab/RefCOCOplus``, ``lmms-lab/RefCOCOg``): files
  ``data/<split>-NNNNN-of-NNNNN.parquet``, splits ``val``, ``test``, ``testA``, ``testB`` (RefCOCOg: ``val``,
  ``test``; no ``train``). Columns ``question_id``, ``image`` (embedded: struct of ``bytes`` and ``path``),
  ``question`` (a prompt), ``answer`` (the list of referring expressions), ``segmentation``, ``bbox``,
  ``iscrowd``, ``file_name`` (the COCO file name). One row per referred object; ``bbox`` is COCO **(x, y, w, h)
  in pixels** (lmms-eval normalises it to 0-1 in its own task code, the files hold pixels). Traps: ``val`` has
  about 5,000 more rows than the standard val (RefCOCO 8,811 rows for 3,811 objects, RefCOCOg 7,573 for 2,573),
  and RefCOCO's ``test`` is not a split of the UNC partition.
* ``jxu124`` (``jxu124/refcoco``, ``jxu124/refcocoplus``, ``jxu124/refcocog``): files
  ``data/<split>-*.parquet``, splits ``train``, ``validation``, ``test``, ``testB`` (RefCOCOg: ``train``,
  ``validation``, ``test``). One row per referred object (the refer API's ref): ``ref_id``, ``ann_id``,
  ``image_id``, ``split``, ``sentences`` (list of ``raw``/``sent``/``sent_id``/``tokens``), ``captions``,
  ``image_path`` (``coco/train2014/COCO_train2014_<id>.jpg``), ``bbox``, ``raw_anns``... **No images**: they
  are resolved against ``data.image_root`` by the image path's file name. ``bbox`` is **(x1, y1, x2, y2) in
  pixels** (assumed: the card does not say; the code that reads it treats it so). Trap: RefCOCO/RefCOCO+'s
  ``test`` file is the standard **testA**; ask for ``testA``.
* ``jxu124-benchmark`` (``jxu124/refcoco-benchmark``): files ``data/<prefix>_<split>-*.parquet`` with prefix
  ``refcoco_unc``, ``refcoco_plus_unc``, ``refcocog_umd``, ``refcocog_google``, ``refcoco_google``. **One row per
  image** holding every referred object of that split: ``image`` (embedded), ``image_info`` (COCO image entry:
  ``id``, ``file_name``, ``width``, ``height``), ``ref_list`` (list of ``ann_info``, the COCO annotation whose
  ``bbox`` is **(x, y, w, h) in pixels**, and ``ref_info``, the refer API's ref with ``sentences``).

Expressions are the refer API's ``sent`` where a layout carries it (the text the TransVG split files hold), else
the layout's list of strings. Embedded images are written once to ``data.image_root`` under their COCO file name
(a file already there is used as it is), so training and evaluation read them like any other image.

Every split read is checked against the standard counts (:mod:`lgrnet.data.readers.standard`): a difference is a
:class:`SplitCountWarning` that names the layout, the split and what differs, since a number measured on it is
not comparable with published results.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from lgrnet.data.readers.standard import count_mismatch, refcoco_key
from lgrnet.data.records import Record
from lgrnet.errors import DataError

LAYOUTS = ("lmms-lab", "jxu124", "jxu124-benchmark")
INSTALL_HINT = "pip install 'lgrnet[hf]' (or pip install pyarrow)"

#: layout -> dataset key -> standard split -> the layout's split name.
_SPLIT_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "lmms-lab": {
        "unc": {"val": "val", "testA": "testA", "testB": "testB"},
        "unc+": {"val": "val", "testA": "testA", "testB": "testB"},
        "gref_umd": {"val": "val", "test": "test"},
    },
    "jxu124": {
        "unc": {"train": "train", "val": "validation", "testA": "test", "testB": "testB"},
        "unc+": {"train": "train", "val": "validation", "testA": "test", "testB": "testB"},
        "gref_umd": {"train": "train", "val": "validation", "test": "test"},
    },
    "jxu124-benchmark": {
        "unc": {s: f"refcoco_unc_{s}" for s in ("val", "testA", "testB")},
        "unc+": {s: f"refcoco_plus_unc_{s}" for s in ("val", "testA", "testB")},
        "gref_umd": {s: f"refcocog_umd_{s}" for s in ("val", "test")},
        "gref": {"val": "refcocog_google_val"},
    },
}


class SplitCountWarning(UserWarning):
    """A split read from the hub differs in size from the standard split of the same name."""


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"data.format hf-parquet needs pyarrow: {INSTALL_HINT}") from None
    return pq


def detect_layout(path: str | Path) -> str:
    """Which hub layout a parquet file has, from its column names."""
    columns = set(_pyarrow_parquet().ParquetFile(path).schema_arrow.names)
    if {"ref_list", "image_info"} <= columns:
        return "jxu124-benchmark"
    if {"answer", "bbox", "file_name"} <= columns:
        return "lmms-lab"
    if {"bbox", "image_path"} <= columns and columns & {"sentences", "captions"}:
        return "jxu124"
    raise DataError(f"{path}: not a RefCOCO parquet layout lgrnet knows ({', '.join(LAYOUTS)}); "
                    f"columns: {', '.join(sorted(columns))}")


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such parquet file or folder")
    files = sorted(p for p in root.rglob("*.parquet") if ".cache" not in p.parts)
    if not files:
        raise DataError(f"{root}: no .parquet files in this folder")
    return files


def _split_of_file(path: Path) -> str:
    """The hub split a file belongs to: ``<split>-00000-of-00002*.parquet``, ``<split>.parquet`` or
    ``<split>/0000.parquet`` (the hub's parquet-converter branch)."""
    match = re.match(r"^(.+?)-\d{5}-of-\d{5}", path.stem)
    if match:
        return match.group(1)
    if re.fullmatch(r"\d{4}", path.stem):
        return path.parent.name
    return path.stem


def _layout_of(files: list[Path]) -> str:
    layouts = {detect_layout(f) for f in files}
    if len(layouts) > 1:
        raise DataError(f"{files[0].parent}: parquet files of different layouts ({', '.join(sorted(layouts))})")
    return layouts.pop()


def hf_splits(root: str | Path, dataset: str) -> list[str]:
    """The standard splits of ``dataset`` that the parquet files under ``root`` hold."""
    files = _parquet_files(Path(root))
    key = refcoco_key(dataset)
    names = _SPLIT_NAMES[_layout_of(files)].get(key, {})
    present = {_split_of_file(f) for f in files}
    return [split for split, name in names.items() if name in present]


def read_hf_parquet(
    root: str | Path, dataset: str, split: str, image_root: str | Path | None = None, *,
    extract_images: bool = True,
) -> list[Record]:
    """Records of the standard ``split`` of ``dataset`` from a hub parquet download (module docstring).

    ``root`` is one parquet file (read whole, as ``split``) or a folder whose files are picked by the layout's
    name for ``split``. With ``image_root`` set and ``extract_images``, embedded images missing there are written
    to it; without ``image_root`` records carry the bare image file names.
    """
    root = Path(root)
    key = refcoco_key(dataset)
    files = _parquet_files(root)
    layout = _layout_of(files)
    if not root.is_file():
        files = _files_for_split(root, files, layout, key, split)
    records: list[Record] = []
    refs = 0
    images: set[str] = set()  # an image's objects may lie in several shards
    for path in files:
        rows = _read_rows(path, layout)
        file_records, file_refs = _records(rows, layout, path, split)
        images.update(r.image for r in file_records)
        if image_root is not None:
            file_records = _resolve_images(file_records, path, layout, Path(image_root), extract_images)
        records.extend(file_records)
        refs += file_refs
    message = count_mismatch(f"hf-parquet {layout}", key, split, len(records), refs, len(images))
    if message:
        warnings.warn(message, SplitCountWarning, stacklevel=2)
    return records


def _files_for_split(root: Path, files: list[Path], layout: str, key: str, split: str) -> list[Path]:
    names = _SPLIT_NAMES[layout].get(key)
    if names is None:
        raise DataError(f"{root}: the {layout} layout holds no {key} data")
    if split in names:
        wanted = names[split]
    elif layout == "lmms-lab" and split == "test":
        wanted = "test"  # RefCOCO's extra split: read it, the count check says it is not standard
    else:
        hint = ""
        if layout == "jxu124" and split == "test" and key in ("unc", "unc+"):
            hint = " (jxu124's 'test' file is the standard testA: ask for testA)"
        raise DataError(f"{root}: {key} has no split {split!r} in the {layout} layout; expected one of "
                        f"{', '.join(names)}{hint}")
    chosen = [f for f in files if _split_of_file(f) == wanted]
    if not chosen:
        raise DataError(f"{root}: no parquet file of split {wanted!r} (standard {split!r}) in this {layout} "
                        f"download; found splits {', '.join(sorted({_split_of_file(f) for f in files}))}")
    return chosen


_ANNOTATION_COLUMNS = {
    "lmms-lab": ["question_id", "answer", "bbox", "file_name"],
    "jxu124": None,  # every column is small (no images)
    "jxu124-benchmark": ["image_info", "ref_list"],
}


def _read_rows(path: Path, layout: str) -> list[dict[str, Any]]:
    """The annotation columns of every row (image bytes are left on disk until they are needed)."""
    pq = _pyarrow_parquet()
    wanted = _ANNOTATION_COLUMNS[layout]
    try:
        if wanted is not None:
            present = set(pq.ParquetFile(path).schema_arrow.names)
            wanted = [c for c in wanted if c in present]
        table = pq.read_table(path, columns=wanted)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid/ArrowIOError derive from these
        raise DataError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None
    return table.to_pylist()


def _records(rows: list[dict[str, Any]], layout: str, path: Path, split: str) -> tuple[list[Record], int]:
    """(records, referred objects) of one file's rows; records carry bare image file names."""
    records: list[Record] = []
    refs = 0
    for index, row in enumerate(rows):
        try:
            if layout == "jxu124-benchmark":
                info = row["image_info"]
                image = str(info["file_name"])
                objects = [(r["ref_info"], r["ann_info"]["bbox"], r["ref_info"].get("ref_id")) for r in row["ref_list"]]
                for ref_info, box, ref_id in objects:
                    texts = [(s.get("sent_id"), s["sent"]) for s in ref_info["sentences"]]
                    records.extend(_make(texts, _xywh(box), image, layout, split, f"{ref_id}", path, index))
                refs += len(objects)
            elif layout == "lmms-lab":
                image = str(row["file_name"])
                texts = [(None, text) for text in row["answer"]]
                records.extend(_make(texts, _xywh(row["bbox"]), image, layout, split, str(row.get("question_id", index)),
                                     path, index))
                refs += 1
            else:  # jxu124
                image = Path(str(row["image_path"])).name
                sentences = row.get("sentences")
                if sentences:
                    texts = [(s.get("sent_id"), s["sent"]) for s in sentences]
                else:
                    texts = [(None, text) for text in row["captions"]]
                box = tuple(float(v) for v in row["bbox"])
                records.extend(_make(texts, box, image, layout, split, str(row.get("ref_id", index)), path, index))
                refs += 1
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: row {index} is not a valid {layout} row ({type(exc).__name__}: {exc})") from None
    if records and max(max(r.box) for r in records) <= 1.0:
        raise DataError(f"{path}: every box lies within [0, 1]: normalised boxes, expected pixels ({layout})")
    return records, refs


def _xywh(box: Any) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def _make(texts: list[tuple[Any, str]], box: tuple[float, ...], image: str, layout: str, split: str, ref: str,
          path: Path, row: int) -> list[Record]:
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box) or x2 < x1 or y2 < y1 or x1 < 0 or y1 < 0:
        raise DataError(f"{path}: row {row} has an invalid box {list(box)} (x1, y1, x2, y2 after conversion)")
    out = []
    for k, (sent_id, text) in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {row} expression {k} is empty or not a string")
        suffix = sent_id if sent_id is not None else f"{ref}/{k}"
        out.append(Record(
            image=image, expression=text.strip(), box=(x1, y1, x2, y2), id=f"{layout}/{split}/{suffix}",
            split=split, source={"format": "hf-parquet", "layout": layout, "file": path.name, "row": row,
                                 "ref": ref},
        ))
    return out


def _resolve_images(records: list[Record], path: Path, layout: str, image_root: Path,
                    extract: bool) -> list[Record]:
    """Join image names to ``image_root``; write embedded images that are missing there (atomically, so
    processes reading the same split at once never see half a file)."""
    if extract and layout != "jxu124":
        missing = {r.source["row"]: r.image for r in records if not (image_root / r.image).is_file()}
        if missing:
            _extract(path, missing, image_root)
    root = os.fspath(image_root)
    return [Record(image=os.path.join(root, r.image), expression=r.expression, box=r.box, id=r.id, split=r.split,
                   source=r.source) for r in records]


def _extract(path: Path, wanted: dict[int, str], image_root: Path) -> None:
    pq = _pyarrow_parquet()
    try:
        image_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data.image_root {image_root}: cannot create it to unpack {path.name}'s images ({exc})") \
            from None
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["image"], batch_size=64):
        for image in batch.column("image").to_pylist():
            name = wanted.get(row)
            row += 1
            if name is None or (image_root / name).is_file():
                continue
            data = image.get("bytes") if isinstance(image, dict) else None
            if not data:
                raise DataError(f"{path}: row {row - 1} has no embedded image and {image_root / name} does not exist")
            tmp = image_root / f".{name}.{os.getpid()}.part"
            tmp.write_bytes(data)
            os.replace(tmp, image_root / name)
