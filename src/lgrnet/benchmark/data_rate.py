"""Data-pipeline throughput of ONE data-loader worker (decode + augment + tokenise + collate, samples/s), and the
number of workers a measured training rate needs.

The pipeline runs in this process with one torch thread, which is what each DataLoader worker gets, so the figure
is the per-worker rate: a GPU step consuming R samples/s needs about R / rate workers. Two rates: from the wall
clock, and from this process's CPU time (``time.process_time``), which is what a worker with a core of its own
achieves when other processes load the machine (they slow the wall-clock rate, not the CPU time per sample, beyond
cache effects).
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from lgrnet.config import AugmentConfig, load_config
from lgrnet.data.dataset import RECDataset, collate
from lgrnet.data.image import load_image
from lgrnet.data.records import Record
from lgrnet.data.transforms import EvalTransform, TrainTransform
from lgrnet.errors import LGRNetError
from lgrnet.model.text import build_tokenizer

_EXPRESSIONS = ["man in the red shirt", "zebra on the left", "the second giraffe from the right",
                "white car parked behind the bus"]


def workers_needed(train_samples_per_s: float, per_worker_samples_per_s: float) -> int:
    """Data-loader worker processes needed so that loading keeps up with the training rate."""
    if per_worker_samples_per_s <= 0:
        raise LGRNetError(f"--data-rate {per_worker_samples_per_s}: the per-worker rate must be positive")
    return max(1, math.ceil(train_samples_per_s / per_worker_samples_per_s))


def image_files(folder: str | Path) -> list[Path]:
    """The JPEGs of ``folder`` that the measurement decodes, in name order; one line naming the folder if none."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not paths:
        raise LGRNetError(f"--data-images {folder}: no .jpg files there")
    return paths


def _synthetic_images(folder: Path) -> list[Path]:
    """COCO-like 640x480 / 480x640 JPEGs with some texture so decode cost is realistic."""
    paths = []
    for i, size in enumerate([(640, 480), (480, 640), (640, 427)]):
        noise = Image.effect_noise(size, 60).convert("RGB")
        path = folder / f"synthetic_{i}.jpg"
        noise.save(path, quality=90)
        paths.append(path)
    return paths


def data_pipeline_rate(image_size: int = 640, samples: int = 64, batch_size: int = 16,
                       images: str | Path | None = None, augment: AugmentConfig | None = None) -> dict[str, float]:
    """Samples/s of the train and eval pipelines in one thread (one worker) at ``image_size``.

    ``images``: a folder of JPEGs to decode (``*.jpg``), or None for synthetic COCO-sized ones. Tokenises with the
    ``lgrnet-tiny`` preset's tokenizer (BERT's uncased vocabulary, offline). Returns, per pipeline (``train`` and
    ``eval``): ``*_samples_per_s`` (wall clock), ``*_cpu_samples_per_s`` (process CPU time),
    ``*_ms_per_sample`` (decode + augment + tokenise) and ``*_collate_ms_per_sample``; and ``decode_ms``, the median
    JPEG decode alone.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's share; the caller's threads come back afterwards
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = image_files(images) if images is not None else _synthetic_images(Path(tmp))
            return _measure(paths, image_size, samples, batch_size, augment)
    finally:
        torch.set_num_threads(threads)


def _measure(paths: list[Path], image_size: int, samples: int, batch_size: int,
             augment: AugmentConfig | None) -> dict[str, float]:
    random.seed(0)
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config("lgrnet-tiny").model.text)
    records = []
    for i in range(samples):
        path = paths[i % len(paths)]
        w, h = Image.open(path).size
        records.append(Record(str(path), _EXPRESSIONS[i % 4], (0.2 * w, 0.3 * h, 0.7 * w, 0.9 * h), f"b{i}"))
    result = {}
    for name, transform in (("train", TrainTransform(image_size, augment or AugmentConfig())),
                            ("eval", EvalTransform(image_size))):
        dataset = RECDataset(records, transform, tokenizer, 40)
        for i in range(min(4, samples)):  # warm-up
            dataset[i]
        times = {"decode+augment+tokenise": 0.0, "collate": 0.0}
        start, cpu_start = time.perf_counter(), time.process_time()
        for b in range(0, samples, batch_size):
            t0 = time.perf_counter()
            items = [dataset[i] for i in range(b, min(b + batch_size, samples))]
            t1 = time.perf_counter()
            collate(items)
            t2 = time.perf_counter()
            times["decode+augment+tokenise"] += t1 - t0
            times["collate"] += t2 - t1
        total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
        result[f"{name}_samples_per_s"] = samples / total
        result[f"{name}_cpu_samples_per_s"] = samples / cpu_total
        result[f"{name}_ms_per_sample"] = 1000 * times["decode+augment+tokenise"] / samples
        result[f"{name}_collate_ms_per_sample"] = 1000 * times["collate"] / samples
    decode = []
    for path in paths * 4:
        t0 = time.perf_counter()
        load_image(path)
        decode.append(time.perf_counter() - t0)
    result["decode_ms"] = 1000 * statistics.median(decode)
    return result
