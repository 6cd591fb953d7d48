"""Learning curve of a training run: val Acc@0.5 against wall-clock time and samples seen, from the engine's
``metrics.jsonl`` (``{"kind": "train"|"val", "step", "time", ...}`` per line, written by rank 0).

Samples seen = step x batch size x accumulation steps x world size (batch and accumulation from the run's
``config.yaml``; ``--world-size`` for multi-process runs). Wall-clock minutes count from the run's first logged
event, shifted back by one logging interval so step 0 sits at t = 0; time spent in a paused/resumed run's gap is
removed (gaps longer than ``--max-gap`` minutes between events).

Several runs that continue one another (``train.init_from`` the previous run's checkpoint) make one curve: give
them in order as ``RUN:STEP``, STEP being the step of the checkpoint the next run started from (events after it
are dropped); each later run's samples and minutes are counted on from there, and its rows carry ``stage``.

    python scripts/learning_curve.py runs/synthref-tiny --png runs/synthref-tiny/learning_curve.png \
        --markdown runs/synthref-tiny/learning_curve.md
    python scripts/learning_curve.py runs/synthref-tiny:9000 runs/synthref-tiny-r2:3000 runs/synthref-tiny-r3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from lgrnet.inference.visualize import font


def read_events(path: Path) -> list[dict]:
    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise SystemExit(f"{path}:{number}: not a JSON line") from None
    return events


def curve(run: Path, world_size: int = 1, max_gap_min: float = 30.0, until_step: int | None = None) -> list[dict]:
    """One row per validation: step, samples seen, minutes, last train loss, val metrics (up to `until_step`)."""
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    folder = metrics.parent
    events = read_events(metrics)
    if until_step is not None:
        events = [e for e in events if e["step"] <= until_step]
    if not events:
        raise SystemExit(f"{metrics}: no events")
    batch, accum = 1, 1
    if (folder / "config.yaml").is_file():
        train = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("train", {})
        batch, accum = int(train.get("batch_size", 1)), int(train.get("accumulation_steps", 1))
    per_step = batch * accum * world_size

    # Active wall-clock: sum of gaps between consecutive events, long gaps (a stopped run) dropped.
    train_events = [e for e in events if e["kind"] == "train"]
    first_interval = 0.0
    if len(train_events) >= 2 and train_events[1]["step"] > train_events[0]["step"]:
        secs_per_step = (train_events[1]["time"] - train_events[0]["time"]) / (
            train_events[1]["step"] - train_events[0]["step"])
        first_interval = secs_per_step * train_events[0]["step"]
    elapsed, last_time, last_loss = first_interval, None, None
    rows = []
    for event in events:
        if last_time is not None:
            gap = event["time"] - last_time
            elapsed += gap if gap <= max_gap_min * 60 else 0.0
        last_time = event["time"]
        if event["kind"] == "train":
            last_loss = event.get("loss")
        elif event["kind"] == "val":
            rows.append({"step": event["step"], "samples": event["step"] * per_step,
                         "minutes": elapsed / 60, "epoch": event.get("epoch"), "loss": last_loss,
                         "acc50": event.get("acc50"), "acc75": event.get("acc75"), "miou": event.get("miou"),
                         "acc50_spatial": event.get("acc50_spatial"),
                         "acc50_non_spatial": event.get("acc50_non_spatial")})
    return rows


def parse_stage(text: str) -> tuple[Path, int | None]:
    """``RUN`` or ``RUN:STEP``."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    return Path(text), None


def stitched_curve(stages: list[str], world_size: int = 1, max_gap_min: float = 30.0) -> list[dict]:
    """Curves of runs that continue one another, with samples and minutes counted on across them."""
    rows: list[dict] = []
    for number, stage in enumerate(stages, 1):
        run, until = parse_stage(stage)
        if number < len(stages) and until is None:
            raise SystemExit(f"{stage}: give the step the next run started from as RUN:STEP")
        samples0 = rows[-1]["samples"] if rows else 0
        minutes0 = rows[-1]["minutes"] if rows else 0.0
        step0 = rows[-1]["global_step"] if rows else 0
        part = curve(run, world_size, max_gap_min, until)
        if until is not None and (not part or part[-1]["step"] != until):
            raise SystemExit(f"{stage}: no validation at step {until} in {run}")
        for row in part:
            row.update(stage=number, global_step=step0 + row["step"], samples=samples0 + row["samples"],
                       minutes=minutes0 + row["minutes"])
        rows += part
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | epoch | step | samples seen | wall-clock (min) | train loss | val Acc@0.5 | Acc@0.75 | mIoU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "-"
        lines.append(f"| {r.get('stage', 1)} | {r['epoch']} | {r['step']} | {r['samples']} | {r['minutes']:.1f} | "
                     f"{loss} | {r['acc50']:.2f} | {r['acc75']:.2f} | {r['miou']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Two panels (Acc@0.5 vs minutes, vs samples seen) drawn with PIL (no plotting library needed)."""
    width, height, margin = 520, 340, 56
    image = Image.new("RGB", (2 * width, height + 30), "white")
    draw = ImageDraw.Draw(image)
    small, big = font(12), font(15)
    draw.text((margin, 6), title, fill="black", font=big)
    for panel, (key, label) in enumerate((("minutes", "wall-clock (min)"), ("samples", "samples seen"))):
        x0, y0 = panel * width + margin, 30 + 16
        x1, y1 = (panel + 1) * width - 16, height - margin + 20
        draw.rectangle([x0, y0, x1, y1], outline="black")
        xmax = max([r[key] for r in rows] + [1e-9])
        for tick in range(0, 101, 20):  # y axis: Acc@0.5 in percent
            y = y1 - (y1 - y0) * tick / 100
            draw.line([x0, y, x1, y], fill=(225, 225, 225))
            draw.text((x0 - 30, y - 7), f"{tick}", fill="black", font=small)
        for k in range(5):
            value = xmax * k / 4
            x = x0 + (x1 - x0) * k / 4
            text = f"{value:.0f}" if xmax >= 10 else f"{value:.1f}"
            text_width = draw.textlength(text, font=small)
            left = x - text_width / 2 if 0 < k < 4 else (x if k == 0 else x - text_width)  # ends stay inside
            draw.text((left, y1 + 4), text, fill="black", font=small)
        draw.text(((x0 + x1) / 2 - 40, y1 + 20), label, fill="black", font=small)
        draw.text((x0 + 4, y0 + 4), "val Acc@0.5 (%)", fill="black", font=small)
        for a, b in zip(rows, rows[1:]):  # dashed line where a continuation stage starts
            if b.get("stage", 1) != a.get("stage", 1):
                x = x0 + (x1 - x0) * a[key] / xmax
                for y in range(int(y0), int(y1), 8):
                    draw.line([x, y, x, min(y + 4, y1)], fill=(120, 120, 120))
        points = [(x0 + (x1 - x0) * r[key] / xmax, y1 - (y1 - y0) * (r["acc50"] or 0) / 100) for r in rows]
        if len(points) > 1:
            draw.line(points, fill=(200, 30, 30), width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(200, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN[:STEP]",
                        help="training output folder (or its metrics.jsonl); several: runs that continue one another")
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--max-gap", type=float, default=30.0, help="minutes; longer gaps are not counted")
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = stitched_curve(args.runs, args.world_size, args.max_gap)
    table = markdown(rows)
    print(table, end="")
    if not rows:
        print("(no validation events yet)")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.png and rows:
        plot(rows, args.png, f"{' + '.join(args.runs)}: val Acc@0.5")


if __name__ == "__main__":
    main()
