"""Per-split dataset statistics (``lgrnet data stats``): records, images, expression length, spatial share, and
for data with target sets (gRefCOCO, SynthRef-G, JSONL ``boxes``) how many expressions have one, several or no
target."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lgrnet.data.records import Record
from lgrnet.data.spatial import SpatialMatch, is_spatial


@dataclass
class SplitStats:
    name: str
    records: int
    images: int
    words_mean: float
    words_median: float
    words_max: int
    spatial_share: float  # fraction of spatial expressions (paper Table II; lgrnet.data.spatial)
    # Expressions per target-set kind ("single", "multi", "none"); None when no record carries a target set.
    target_kinds: dict[str, int] | None = None


TARGET_KINDS = ("single", "multi", "none")


def split_stats(name: str, records: Sequence[Record], spatial_match: SpatialMatch = "substring") -> SplitStats:
    lengths = [len(r.expression.split()) for r in records] or [0]
    spatial = sum(is_spatial(r.expression, spatial_match) for r in records)
    kinds = None
    if any(r.boxes is not None for r in records):
        kinds = dict.fromkeys(TARGET_KINDS, 0)
        for r in records:
            kinds[r.kind] += 1
    return SplitStats(
        name=name,
        records=len(records),
        images=len({r.image for r in records}),
        words_mean=statistics.fmean(lengths),
        words_median=float(statistics.median(lengths)),
        words_max=max(lengths),
        spatial_share=spatial / len(records) if records else 0.0,
        target_kinds=kinds,
    )


def format_table(rows: Sequence[SplitStats]) -> str:
    """A Markdown table (pastes straight into docs); with target-set columns when a split has target sets."""
    kinds = any(s.target_kinds is not None for s in rows)
    lines = [
        "| split | records | images | words mean | words median | words max | spatial |"
        + (" single | multi | none |" if kinds else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" * len(TARGET_KINDS) if kinds else ""),
    ]
    for s in rows:
        line = (f"| {s.name} | {s.records:,} | {s.images:,} | {s.words_mean:.2f} | {s.words_median:g} | "
                f"{s.words_max} | {100 * s.spatial_share:.1f}% |")
        if kinds:  # a split of classic records counts each as single
            counts = s.target_kinds or {"single": s.records, "multi": 0, "none": 0}
            line += "".join(f" {counts[k]:,} |" for k in TARGET_KINDS)
        lines.append(line)
    return "\n".join(lines)
