"""Write one PNG with all 30 real_smoke samples for a person to check by eye.

Each tile: the image read through the TransVG reader (image root = real_smoke/images), the reader's box in
green, the box after the eval transform at 640 mapped back with ``canvas_to_original`` in red (they should
coincide), and the expression.

    python scripts/overlay_real_smoke.py --output real_smoke_overlay.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from lgrnet.data.image import load_image
from lgrnet.data.readers import read_transvg
from lgrnet.data.transforms import EvalTransform, canvas_to_original

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TILE = 320


def real_smoke_records(shared: Path = SHARED):
    """The 30 manifest samples, read from the TransVG split files (filtered to the three real_smoke images)."""
    root = shared / "real_smoke"
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    names = {Path(m["image"]).name for m in manifest}
    records = []
    for dataset, split in sorted({(m["transvg_dataset"], m["split"]) for m in manifest}):
        records += [r for r in read_transvg(shared / "transvg_splits", dataset, split, root / "images")
                    if Path(r.image).name in names]
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("real_smoke_overlay.png"))
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared/data folder")
    parser.add_argument("--columns", type=int, default=6)
    args = parser.parse_args(argv)
    records = real_smoke_records(args.shared)
    transform = EvalTransform(640)
    rows = (len(records) + args.columns - 1) // args.columns
    sheet = Image.new("RGB", (args.columns * TILE, rows * (TILE + 30)), "white")
    worst = 0.0
    for i, record in enumerate(records):
        image = load_image(record.image, record.id)
        sample = transform(image, record.expression, record.box)
        back = canvas_to_original(sample.box[None], [sample])[0].tolist()
        worst = max(worst, max(abs(a - b) for a, b in zip(back, record.box)))
        scale = TILE / max(image.size)
        thumb = image.resize((round(image.width * scale), round(image.height * scale)))
        draw = ImageDraw.Draw(thumb)
        draw.rectangle([v * scale for v in record.box], outline=(0, 220, 0), width=3)
        draw.rectangle([v * scale for v in back], outline=(230, 0, 0), width=1)
        x, y = (i % args.columns) * TILE, (i // args.columns) * (TILE + 30)
        sheet.paste(thumb, (x, y))
        ImageDraw.Draw(sheet).text((x + 2, y + TILE + 2), f"{record.id}: {record.expression}"[:52], fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"wrote {args.output}: {len(records)} samples; largest round-trip error {worst:.4f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
