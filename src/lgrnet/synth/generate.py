"""Writing a SynthRef dataset: splits, images and JSONL in the project's custom-data format.

Layout of ``out``::

    train.jsonl val.jsonl testA.jsonl testB.jsonl   one expression per line:
        {"id", "image" (relative to the JSONL file), "expression", "box" [x1,y1,x2,y2] original pixels,
         "split", "query" (semantic form, lgrnet.synth.grammar), "target" (object index in the scene)}
    scenes.jsonl                                    one line per image: size, background, objects
    images/<split>/<index>.jpg
    meta.json                                       seed, counts and generator version (the cache key)

SynthRef-G (``grec=True``) mixes three kinds of expressions (``grec_shares``, default 50/30/20%): single-target
ones from the same grammar, multi-target ones (2-4 objects) and no-target ones (:mod:`lgrnet.synth.sets`). Its
lines carry ``"boxes"`` (the target set's boxes, left to right, possibly empty), ``"targets"`` (their object
indices, same order) and ``"kind"`` ("single" / "multi" / "none"); single-target lines also keep ``"box"`` and
``"target"``. Its scenes come from their own seeds, so a SynthRef-G folder never shares images with SynthRef.

train/val mix every expression family; testA holds expressions that use the paper's spatial words and testB the
rest (:func:`lgrnet.synth.grammar.is_spatial`), on separate images. Every image is generated from its own seed,
derived from (seed, split, index), so the output is byte-identical for a seed and counts whatever the number of
worker processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lgrnet.errors import DataError
from lgrnet.synth.grammar import describe
from lgrnet.synth.scene import Scene, render_scene
from lgrnet.synth.sets import describe_none, describe_set

GENERATOR_VERSION = 1
GREC_VERSION = 1  # version of the SynthRef-G generator (its own cache key and seeds)
KINDS = ("single", "multi", "none")
DEFAULT_GREC_SHARES: tuple[float, float, float] = (0.5, 0.3, 0.2)
SPLITS = ("train", "val", "testA", "testB")
# Which expressions each split takes: None = any, True = spatial wording only, False = non-spatial only.
SPLIT_SPATIAL: dict[str, bool | None] = {"train": None, "val": None, "testA": True, "testB": False}


@dataclass(frozen=True)
class ImageTask:
    out: str
    seed: int
    split: str
    index: int
    num_expressions: int
    image_format: str = "jpg"
    grec_shares: tuple[float, float, float] | None = None  # None: classic SynthRef


def _rngs(seed: int, split: str, index: int, generator: str = "synthref", version: int = GENERATOR_VERSION
          ) -> tuple[random.Random, np.random.Generator]:
    key = f"{generator}/v{version}/{seed}/{split}/{index}"
    digest = hashlib.sha256(key.encode()).digest()
    return random.Random(digest), np.random.default_rng(int.from_bytes(digest[:16], "little"))


def make_sample(seed: int, split: str, index: int, num_expressions: int, return_masks: bool = False
                ) -> tuple[Scene, object, list[dict], list | None]:
    """Scene, PIL image, expression entries (text, query, target) and optionally per-object masks for one image.
    Scenes in which too few expressions can be made (rare) are redrawn from the same generator."""
    rng, nrng = _rngs(seed, split, index)
    want = SPLIT_SPATIAL[split]
    for _attempt in range(50):
        scene, image, masks = render_scene(rng, nrng, return_masks=return_masks)
        targets = list(range(len(scene.objects)))
        rng.shuffle(targets)
        entries: list[dict] = []
        texts: set[str] = set()
        # Prefer distinct targets; revisit objects only when the scene has fewer than needed.
        for _round in range(3):
            for t in targets:
                if len(entries) == num_expressions:
                    break
                out = describe(rng, scene, t, want)
                if out is None or out[0] in texts:
                    continue
                texts.add(out[0])
                entries.append({"expression": out[0], "query": out[1], "target": t})
            if len(entries) == num_expressions:
                return scene, image, entries, masks
    raise RuntimeError(f"SynthRef: could not describe {split} image {index} (seed {seed})")


def make_grec_sample(seed: int, split: str, index: int, num_expressions: int,
                     shares: tuple[float, float, float] = DEFAULT_GREC_SHARES, return_masks: bool = False
                     ) -> tuple[Scene, object, list[dict], list | None]:
    """Scene, PIL image, expression entries (text, query, kind, targets left to right) and optionally masks for
    one SynthRef-G image. Each expression's kind is drawn with ``shares`` (single, multi, none); a scene that
    cannot give every drawn kind is redrawn from the same generator."""
    rng, nrng = _rngs(seed, split, index, "synthref-g", GREC_VERSION)
    want = SPLIT_SPATIAL[split]
    kinds = rng.choices(KINDS, weights=shares, k=num_expressions)
    for _attempt in range(50):
        scene, image, masks = render_scene(rng, nrng, return_masks=return_masks)
        entries = _grec_entries(rng, scene, kinds, want)
        if entries is not None:
            return scene, image, entries, masks
    raise RuntimeError(f"SynthRef-G: could not describe {split} image {index} (seed {seed})")


def _grec_entries(rng: random.Random, scene: Scene, kinds: list[str], want: bool | None) -> list[dict] | None:
    """One expression of each kind in ``kinds`` with distinct texts, preferring distinct target sets; None when
    the scene cannot give one of them."""
    objects = list(range(len(scene.objects)))
    rng.shuffle(objects)
    entries: list[dict] = []
    texts: set[str] = set()
    used: set[tuple[int, ...]] = set()
    for kind in kinds:
        found = None
        if kind == "single":
            for t in sorted(objects, key=lambda i: (i,) in used):  # stable: not yet described objects first
                out = describe(rng, scene, t, want)
                if out is not None and out[0] not in texts:
                    found = (out[0], out[1], [t])
                    break
        else:
            make = describe_set if kind == "multi" else describe_none
            for _try in range(6):
                out = make(rng, scene, want)
                if out is None:
                    break
                if out[0] in texts:
                    continue
                if found is None or tuple(sorted(found[2])) in used:
                    found = out
                if tuple(sorted(out[2])) not in used or kind == "none":
                    break
        if found is None:
            return None
        text, query, members = found
        texts.add(text)
        used.add(tuple(sorted(members)))
        ordered = sorted(members, key=lambda i: (scene.objects[i].cx, scene.objects[i].cy, i))
        entries.append({"expression": text, "query": query, "kind": kind, "targets": ordered})
    return entries


def _run_task(task: ImageTask) -> tuple[list[dict], dict]:
    if task.grec_shares is not None:
        return _run_grec_task(task)
    scene, image, entries, _ = make_sample(task.seed, task.split, task.index, task.num_expressions)
    rel = _save_image(task, image)
    records = []
    for j, e in enumerate(entries):
        records.append({
            "id": f"{task.split}-{task.index:06d}-{j}",
            "image": rel,
            "expression": e["expression"],
            "box": [float(v) for v in scene.objects[e["target"]].box],
            "split": task.split,
            "query": e["query"],
            "target": e["target"],
        })
    return records, _scene_line(task, scene, rel)


def _run_grec_task(task: ImageTask) -> tuple[list[dict], dict]:
    scene, image, entries, _ = make_grec_sample(task.seed, task.split, task.index, task.num_expressions,
                                                task.grec_shares)
    rel = _save_image(task, image)
    records = []
    for j, e in enumerate(entries):
        boxes = [[float(v) for v in scene.objects[i].box] for i in e["targets"]]
        record = {
            "id": f"{task.split}-{task.index:06d}-{j}",
            "image": rel,
            "expression": e["expression"],
            "boxes": boxes,
            "split": task.split,
            "query": e["query"],
            "kind": e["kind"],
            "targets": e["targets"],
        }
        if len(boxes) == 1:
            record["box"], record["target"] = boxes[0], e["targets"][0]
        records.append(record)
    return records, _scene_line(task, scene, rel)


def _save_image(task: ImageTask, image) -> str:
    rel = f"images/{task.split}/{task.index:06d}.{task.image_format}"
    path = Path(task.out) / rel
    if task.image_format == "png":
        image.save(path, format="PNG", compress_level=1)
    else:
        image.save(path, format="JPEG", quality=92, subsampling=0)
    return rel


def _scene_line(task: ImageTask, scene: Scene, rel: str) -> dict:
    return {"image": rel, "split": task.split, "width": scene.width, "height": scene.height,
            "background": scene.background, "objects": [o.to_dict() for o in scene.objects]}


def _tasks(out: Path, seed: int, counts: dict[str, int], per_image: int, image_format: str,
           grec_shares: tuple[float, float, float] | None = None) -> list[ImageTask]:
    tasks = []
    for split in SPLITS:
        n = counts.get(split, 0)
        for index in range(math.ceil(n / per_image)):
            k = min(per_image, n - index * per_image)
            tasks.append(ImageTask(str(out), seed, split, index, k, image_format, grec_shares))
    return tasks


def _check_shares(shares: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in shares)
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise DataError(f"SynthRef-G: shares of single, multi and no-target expressions must be three numbers "
                        f">= 0 that sum to 1, got {list(shares)}")
    return values[0], values[1], values[2]


def generate(out: str | Path, seed: int = 0, num_train: int = 20000, num_val: int = 1000, num_test: int = 1000,
             per_image: int = 3, workers: int | None = None, image_format: str = "jpg",
             progress: bool = False, grec: bool = False,
             grec_shares: tuple[float, float, float] = DEFAULT_GREC_SHARES) -> dict:
    """Generate SynthRef (or, with ``grec``, SynthRef-G with ``grec_shares`` of single-, multi- and no-target
    expressions) into ``out`` and return its ``meta.json`` content. ``num_test`` is the number of expressions in
    each of testA and testB. An existing SynthRef folder is replaced; any other non-empty folder is refused."""
    out = Path(out)
    shares = _check_shares(grec_shares) if grec else None
    if per_image < 1:
        raise DataError(f"SynthRef: --per-image must be >= 1, got {per_image}")
    if image_format not in ("jpg", "png"):
        raise DataError(f"SynthRef: image format must be jpg or png, got {image_format!r}")
    counts = {"train": num_train, "val": num_val, "testA": num_test, "testB": num_test}
    for split, n in counts.items():
        if n < 0:
            raise DataError(f"SynthRef: number of {split} samples must be >= 0, got {n}")
    if out.exists() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise DataError(f"SynthRef: {out} exists, is not empty and is not a SynthRef folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # marks the folder incomplete until the end
    shutil.rmtree(out / "images", ignore_errors=True)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)

    tasks = _tasks(out, seed, counts, per_image, image_format, shares)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers > 1 and len(tasks) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            results = list(_progress(pool.imap(_run_task, tasks, chunksize=16), len(tasks), progress, grec))
    else:
        results = list(_progress(map(_run_task, tasks), len(tasks), progress, grec))

    with ExitStack() as stack:
        handles = {s: stack.enter_context(open(out / f"{s}.jsonl", "w", encoding="utf-8")) for s in SPLITS}
        scenes = stack.enter_context(open(out / "scenes.jsonl", "w", encoding="utf-8"))
        for records, scene_line in results:
            for r in records:
                handles[r["split"]].write(json.dumps(r, sort_keys=True) + "\n")
            scenes.write(json.dumps(scene_line, sort_keys=True) + "\n")
    meta = {"generator": "synthref", "version": GENERATOR_VERSION, "seed": seed, "counts": counts,
            "per_image": per_image, "image_format": image_format,
            "images": {s: sum(t.split == s for t in tasks) for s in SPLITS}}
    if shares is not None:
        kinds = {s: dict.fromkeys(KINDS, 0) for s in SPLITS}
        for records, _ in results:
            for r in records:
                kinds[r["split"]][r["kind"]] += 1
        meta.update(generator="synthref-g", version=GREC_VERSION, grec=True, grec_shares=list(shares), kinds=kinds)
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _progress(it, total: int, enabled: bool, grec: bool = False):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="SynthRef-G" if grec else "SynthRef", unit="img")


def ensure_synthref(out: str | Path, seed: int = 0, num_train: int = 0, num_val: int = 1000, num_test: int = 1000,
                    per_image: int = 3, workers: int | None = None, image_format: str = "jpg",
                    grec: bool = False, grec_shares: tuple[float, float, float] = DEFAULT_GREC_SHARES) -> dict:
    """Reuse ``out`` when its meta.json records the same generator (SynthRef or SynthRef-G, with the same
    shares) and version, seed and counts; else generate. (The cached evaluation set of the quickstart.)"""
    out = Path(out)
    shares = list(_check_shares(grec_shares)) if grec else None
    counts = {"train": num_train, "val": num_val, "testA": num_test, "testB": num_test}
    meta_path = out / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        version = GREC_VERSION if grec else GENERATOR_VERSION
        if (meta.get("version") == version and meta.get("seed") == seed and meta.get("counts") == counts
                and meta.get("per_image") == per_image and meta.get("image_format") == image_format
                and meta.get("grec", False) == grec and meta.get("grec_shares") == shares):
            return meta
    return generate(out, seed, num_train, num_val, num_test, per_image, workers, image_format,
                    grec=grec, grec_shares=grec_shares)
