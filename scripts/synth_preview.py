"""Render a grid of SynthRef samples (image, target box, expression) to a PNG, to eyeball scenes and wording.

    .venv/bin/python scripts/synth_preview.py --out synth_preview.png [--split testA] [--seed 0] [--num 12]

Samples are made in memory with the generator (no dataset folder needed); with ``--data DIR`` the first samples
of ``DIR/<split>.jsonl`` are drawn instead.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from lgrnet.synth.generate import SPLITS, make_sample

CELL = 320


def _samples(args: argparse.Namespace) -> list[tuple[Image.Image, list[float], str]]:
    out = []
    if args.data:
        root = Path(args.data)
        with open(root / f"{args.split}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                out.append((Image.open(root / r["image"]).convert("RGB"), r["box"], r["expression"]))
                if len(out) == args.num:
                    break
        return out
    index = 0
    while len(out) < args.num:
        scene, image, entries, _ = make_sample(args.seed, args.split, index, args.per_image)
        for e in entries:
            out.append((image, list(scene.objects[e["target"]].box), e["expression"]))
        index += 1
    return out[: args.num]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="synth_preview.png")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=12)
    p.add_argument("--per-image", type=int, default=2)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--data", default=None, help="a SynthRef folder to read instead of generating")
    args = p.parse_args()

    samples = _samples(args)
    rows = (len(samples) + args.cols - 1) // args.cols
    text_h = 48
    grid = Image.new("RGB", (args.cols * CELL, rows * (CELL + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (image, box, expression) in enumerate(samples):
        r = min(CELL / image.width, CELL / image.height)  # letterbox into the cell
        thumb = image.resize((round(image.width * r), round(image.height * r)), Image.BILINEAR)
        x, y = (k % args.cols) * CELL, (k // args.cols) * (CELL + text_h)
        grid.paste(thumb, (x, y))
        bx = [x + box[0] * r, y + box[1] * r, x + box[2] * r, y + box[3] * r]
        draw.rectangle(bx, outline=(255, 0, 255), width=2)
        draw.text((x + 4, y + CELL + 2), "\n".join(textwrap.wrap(expression, 52)[:3]), fill=(0, 0, 0))
    grid.save(args.out)
    print(f"wrote {args.out} ({len(samples)} samples)")


if __name__ == "__main__":
    main()
