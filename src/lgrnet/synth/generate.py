"""Writing a SynthRef dataset: splits, images and JSONL in the project's custom-data format.

Layout of ``out``::

    train.jsonl val.jsonl testA.jsonl testB.jsonl   one expression per line:
        {"id", "image" (relative to the JSONL file), "expression", "box" [x1,y1,x2,y2] original pixels,
         "split", "query" (semantic form, lgrnet.synth.grammar), "target" (object index in the scene)}
    scenes.jsonl                                    one line per image: size, background, objects
    images/<split>/<index>.jpg
    meta.json                                       seed, counts and generator version (the cache key)

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

GENERATOR_VERSION = 1
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


def _rngs(seed: int, split: str, index: int) -> tuple[random.Random, np.random.Generator]:
    key = f"synthref/v{GENERATOR_VERSION}/{seed}/{split}/{index}"
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


def _run_task(task: ImageTask) -> tuple[list[dict], dict]:
    scene, image, entries, _ = make_sample(task.seed, task.split, task.index, task.num_expressions)
    rel = f"images/{task.split}/{task.index:06d}.{task.image_format}"
    path = Path(task.out) / rel
    if task.image_format == "png":
        image.save(path, format="PNG", compress_level=1)
    else:
        image.save(path, format="JPEG", quality=92, subsampling=0)
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
    scene_line = {"image": rel, "split": task.split, "width": scene.width, "height": scene.height,
                  "background": scene.background, "objects": [o.to_dict() for o in scene.objects]}
    return records, scene_line


def _tasks(out: Path, seed: int, counts: dict[str, int], per_image: int, image_format: str) -> list[ImageTask]:
    tasks = []
    for split in SPLITS:
        n = counts.get(split, 0)
        for index in range(math.ceil(n / per_image)):
            k = min(per_image, n - index * per_image)
            tasks.append(ImageTask(str(out), seed, split, index, k, image_format))
    return tasks


def generate(out: str | Path, seed: int = 0, num_train: int = 20000, num_val: int = 1000, num_test: int = 1000,
             per_image: int = 3, workers: int | None = None, image_format: str = "jpg",
             progress: bool = False) -> dict:
    """Generate SynthRef into ``out`` and return its ``meta.json`` content. ``num_test`` is the number of
    expressions in each of testA and testB. An existing SynthRef folder is replaced; any other non-empty folder
    is refused."""
    out = Path(out)
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

    tasks = _tasks(out, seed, counts, per_image, image_format)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers > 1 and len(tasks) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            results = list(_progress(pool.imap(_run_task, tasks, chunksize=16), len(tasks), progress))
    else:
        results = list(_progress(map(_run_task, tasks), len(tasks), progress))

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
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="SynthRef", unit="img")


def ensure_synthref(out: str | Path, seed: int = 0, num_train: int = 0, num_val: int = 1000, num_test: int = 1000,
                    per_image: int = 3, workers: int | None = None, image_format: str = "jpg") -> dict:
    """Reuse ``out`` when its meta.json records the same generator version, seed and counts; else generate.
    (The cached evaluation set of the quickstart.)"""
    out = Path(out)
    counts = {"train": num_train, "val": num_val, "testA": num_test, "testB": num_test}
    meta_path = out / "meta.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if (meta.get("version") == GENERATOR_VERSION and meta.get("seed") == seed and meta.get("counts") == counts
                and meta.get("per_image") == per_image and meta.get("image_format") == image_format):
            return meta
    return generate(out, seed, num_train, num_val, num_test, per_image, workers, image_format)
