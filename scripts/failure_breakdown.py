"""Where a SynthRef model fails: each val prediction is matched to the scene's objects (``scenes.jsonl``) and
counted as ``ok`` (IoU >= 0.5 with the target), ``right_obj_imprecise`` (the target is the best-overlapping object
but IoU < 0.5), ``wrong_obj`` (another object overlaps best, IoU >= 0.3) or ``nothing``; per expression family
(``query.type``) and target size class.

    python scripts/failure_breakdown.py src/lgrnet/weights/synthref-small --data data/synthref-60k --num 500
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from torchvision.ops import box_iou

from lgrnet.inference.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synthref-60k"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--num", type=int, default=500, help="first N expressions of the split")
    args = parser.parse_args()
    scenes = {}
    for line in (args.data / "scenes.jsonl").read_text().splitlines():
        scene = json.loads(line)
        scenes[scene["image"]] = scene
    records = [json.loads(line) for line in (args.data / f"{args.split}.jsonl").read_text().splitlines()]
    records = records[: args.num]
    predictor = Predictor.from_pretrained(args.checkpoint, device="cpu")
    predictions = predictor.predict_many([(args.data / r["image"], r["expression"]) for r in records],
                                         batch_size=32)
    total: collections.Counter = collections.Counter()
    groups: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for record, prediction in zip(records, predictions):
        scene = scenes[record["image"]]
        ious = box_iou(torch.tensor([prediction.box_xyxy]), torch.tensor([o["box"] for o in scene["objects"]]))[0]
        best, target = int(ious.argmax()), record["target"]
        if ious[target] >= 0.5:
            outcome = "ok"
        elif best == target:
            outcome = "right_obj_imprecise"
        elif ious[best] >= 0.3:
            outcome = "wrong_obj"
        else:
            outcome = "nothing"
        total[outcome] += 1
        groups[("type", record["query"]["type"])][outcome] += 1
        groups[("size", scene["objects"][target]["size"])][outcome] += 1
    print(f"{args.checkpoint} on {args.data} {args.split}, {len(records)} expressions: {dict(total)}")
    print("| group | expressions | ok | right object, IoU < 0.5 | wrong object | nothing |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in sorted(groups):
        counts, n = groups[key], sum(groups[key].values())
        cells = " | ".join(f"{100 * counts[c] / n:.1f}" for c in ("ok", "right_obj_imprecise", "wrong_obj", "nothing"))
        print(f"| {key[0]} {key[1]} | {n} | {cells} |")


if __name__ == "__main__":
    main()
