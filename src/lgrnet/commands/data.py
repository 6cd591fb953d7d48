"""``lgrnet data``: dataset statistics and conversion of every supported format to lgrnet's JSONL format.

  lgrnet data stats --format transvg --root data                       # every <ds>/<ds>_<split>.pth under data/
  lgrnet data stats --format transvg --root data --dataset unc --split val --split testA
  lgrnet data stats --format jsonl --root my_data.jsonl
  lgrnet data convert --format refer --root refer/data --dataset refcocog --split-by umd \\
      --image-root coco/train2014 --split train --split val --output refcocog_umd.jsonl
  lgrnet data stats --format hf-parquet --root RefCOCO --dataset refcoco     # a Hugging Face parquet download
  lgrnet data stats --format grefcoco --root grefcoco                        # single/multi/no-target counts
  lgrnet data stats --format vg --root vg/region_descriptions.json \\
      --exclude-images-of data/splits/unc/unc_val.pth                        # what the leakage guard drops
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lgrnet.config import DATA_FORMATS
from lgrnet.errors import LGRNetError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="dataset statistics and conversion to JSONL", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--format", choices=DATA_FORMATS, default="transvg", help="input format (default: %(default)s)")
        q.add_argument("--root", required=True, type=Path,
                       help="transvg: split root holding <dataset>/; refer: folder with <dataset>/refs(...).p; "
                            "grefcoco: folder with [grefcoco/]grefs(...).json + instances.json; "
                            "vg: region_descriptions.json; jsonl/synth: a JSONL file or a folder of <split>.jsonl; "
                            "hf-parquet: a Hugging Face parquet download or one .parquet file")
        q.add_argument("--dataset", help="transvg key (unc, unc+, gref, gref_umd, referit, flickr), refer dataset, or "
                                         "hf-parquet dataset (refcoco, refcoco+, refcocog or a transvg key)")
        q.add_argument("--split", dest="splits", action="append", default=[], metavar="SPLIT",
                       help="split to read (repeatable; default: every split found)")
        q.add_argument("--split-by", default="unc",
                       help="refer: refs(<split-by>).p; grefcoco: grefs(<split-by>).json (default: %(default)s)")
        q.add_argument("--image-root", type=Path, help="folder the records' image names are joined to")
        q.add_argument("--exclude-images-of", action="append", default=[], metavar="SPLIT_FILE",
                       help="vg: drop the VG images that are COCO images of this evaluation split file (TransVG "
                            ".pth or .jsonl; repeatable; needs image_data.json beside region_descriptions.json)")

    stats = sub.add_parser("stats", help="per split: records, images, expression length, spatial share")
    common(stats)
    stats.add_argument("--spatial-match", choices=("substring", "word"), default="substring",
                       help="spatial = left/right/top/bottom/middle as substrings (the reference's rule) or as "
                            "whole words (default: %(default)s)")
    stats.set_defaults(func=run_stats)
    convert = sub.add_parser("convert", help="write records as lgrnet JSONL (image paths relative to the output)")
    common(convert)
    convert.add_argument("--output", "-o", required=True, type=Path, help="JSONL file to write")
    convert.set_defaults(func=run_convert)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _sources(args: argparse.Namespace, extract_images: bool = False) -> list[tuple[str, list]]:
    """(label, records) for each requested split, read through the library's readers (``extract_images``:
    hf-parquet's embedded images are written to --image-root)."""
    from lgrnet.data.readers import (
        read_grefcoco,
        read_hf_parquet,
        read_jsonl,
        read_refer,
        read_transvg,
        read_visual_genome,
        read_visual_genome_excluding,
    )
    from lgrnet.data.readers.hf_parquet import hf_splits
    from lgrnet.data.readers.transvg import BOX_FORMAT, SPLITS, split_file

    root, fmt = args.root, args.format
    image_root = args.image_root
    out: list[tuple[str, list]] = []
    if fmt == "transvg":
        datasets = [args.dataset] if args.dataset else [d for d in BOX_FORMAT if (root / d).is_dir()]
        if not datasets:
            raise LGRNetError(f"--root {root}: no TransVG dataset folder ({', '.join(BOX_FORMAT)}) found")
        for ds in datasets:
            splits = args.splits or [s for s in SPLITS.get(ds, ()) if split_file(root, ds, s).is_file()]
            for split in splits:
                out.append((f"{ds} {split}", read_transvg(root, ds, split, image_root)))
    elif fmt == "refer":
        if not args.dataset:
            raise LGRNetError("--dataset is required for --format refer (e.g. refcoco, refcocog)")
        records = read_refer(root, args.dataset, args.split_by, None, image_root)
        for split in args.splits or list(dict.fromkeys(r.split for r in records)):
            out.append((f"{args.dataset}({args.split_by}) {split}", [r for r in records if r.split == split]))
    elif fmt == "grefcoco":
        records = read_grefcoco(root, args.split_by, None, image_root)
        found = list(dict.fromkeys(r.split for r in records))
        for split in args.splits or found:
            if split not in found:
                raise LGRNetError(f"--split {split}: gRefCOCO grefs({args.split_by}) under {root} has no refs of "
                                  f"that split (its splits: {', '.join(found) or 'none'})")
            out.append((f"grefcoco({args.split_by}) {split}", [r for r in records if r.split == split]))
    elif fmt == "vg":
        path = root / "region_descriptions.json" if root.is_dir() else root
        if args.exclude_images_of:
            records, exclusion = read_visual_genome_excluding(path, args.exclude_images_of, image_root)
            print(f"vg train: {exclusion.summary()}")
            out.append(("vg train", records))
        else:
            out.append(("vg train", read_visual_genome(path, image_root)))
    elif fmt == "hf-parquet":
        if not args.dataset:
            raise LGRNetError("--dataset is required for --format hf-parquet (refcoco, refcoco+ or refcocog)")
        for split in args.splits or hf_splits(root, args.dataset):
            out.append((f"{args.dataset} {split}", read_hf_parquet(root, args.dataset, split, image_root,
                                                                   extract_images=extract_images)))
    else:
        files = [root / f"{s}.jsonl" for s in args.splits] if root.is_dir() and args.splits else (
            sorted(p for p in root.glob("*.jsonl") if not (fmt == "synth" and p.name == "scenes.jsonl"))
            if root.is_dir() else [root])  # a SynthRef folder also holds scenes.jsonl (not records)
        for path in files:
            records = read_jsonl(path)
            if root.is_dir():
                out.append((path.stem, records))
                continue
            for split in args.splits or list(dict.fromkeys(r.split for r in records)):
                out.append((split or path.stem, [r for r in records if r.split == split] if split else records))
    return out


def run_stats(args: argparse.Namespace) -> int:
    from lgrnet.data.stats import format_table, split_stats

    rows = [split_stats(label, records, args.spatial_match) for label, records in _sources(args)]
    if not rows:
        raise LGRNetError(f"--root {args.root}: no splits found")
    print(format_table(rows))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from lgrnet.data.readers import write_jsonl
    from lgrnet.output_paths import check_output_file

    check_output_file(args.output, "--output")
    records = [r for _, recs in _sources(args, extract_images=True) for r in recs]
    if not records:
        raise LGRNetError(f"--root {args.root}: no records to convert")
    count = write_jsonl(records, args.output)
    print(f"wrote {count:,} records to {args.output}")
    return 0
