"""Per-split dataset statistics (``lgrnet data stats``): records, images, expression length, spatial share."""

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


def split_stats(name: str, records: Sequence[Record], spatial_match: SpatialMatch = "substring") -> SplitStats:
    lengths = [len(r.expression.split()) for r in records] or [0]
    spatial = sum(is_spatial(r.expression, spatial_match) for r in records)
    return SplitStats(
        name=name,
        records=len(records),
        images=len({r.image for r in records}),
        words_mean=statistics.fmean(lengths),
        words_median=float(statistics.median(lengths)),
        words_max=max(lengths),
        spatial_share=spatial / len(records) if records else 0.0,
    )


def format_table(rows: Sequence[SplitStats]) -> str:
    """A Markdown table (pastes straight into docs)."""
    lines = [
        "| split | records | images | words mean | words median | words max | spatial |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows:
        lines.append(
            f"| {s.name} | {s.records:,} | {s.images:,} | {s.words_mean:.2f} | {s.words_median:g} | {s.words_max} "
            f"| {100 * s.spatial_share:.1f}% |"
        )
    return "\n".join(lines)
