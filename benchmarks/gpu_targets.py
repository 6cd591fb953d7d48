"""The GPU targets, checked on the JSON reports that ``benchmarks/gpu_benchmark.sh`` writes.

    python benchmarks/gpu_targets.py OUT    # reads OUT/{eager,compiled,latency}.json, writes OUT/summary.json

Prints each report's per-model lines, the data-loading figure and the verdicts (PASS / MISS / not measured).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPORTS = ("eager", "compiled", "latency")


def _find(report: dict[str, Any] | None, model: str, batch: int, mode: str) -> dict[str, Any] | None:
    if not report or model not in report.get("models", {}):
        return None
    return next((r for r in report["models"][model]["inference"] if r["batch_size"] == batch and r["mode"] == mode),
                None)


def gpu_targets(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPU targets from the reports ``{"eager": ..., "compiled": ..., "latency": ...}`` (JSON dicts).

    Each row: target, measured value, limit, ``passed`` (None where the figure is missing).
    """
    rows: list[dict[str, Any]] = []

    def row(target: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        passed = None if value is None else (value >= limit if higher_is_better else value < limit)
        rows.append({"target": target, "value": None if value is None else round(value, 4), "limit": limit,
                     "passed": passed})

    compiled = reports.get("compiled")
    full, floor = _find(compiled, "full", 32, "compiled"), _find(compiled, "floor", 32, "compiled")
    row("inference b32 bf16 compiled: full / floor images/s", full["images_per_s"] / floor["images_per_s"]
        if full and floor else None, 0.9, True)
    latencies = [r["latency_p50_ms"] for key in ("latency", "compiled", "eager")
                 for mode in ("cuda-graphs", "compiled", "eager") if (r := _find(reports.get(key), "full", 1, mode))]
    row("batch-1 latency of the full model, best mode (ms)", min(latencies) if latencies else None, 10.0, False)
    eager = reports.get("eager") or {}
    models = eager.get("models", {})
    train_full = (models.get("full") or {}).get("train")
    train_floor = (models.get("floor") or {}).get("train")
    row("training b32 bf16: full / floor samples/s", train_full["samples_per_s"] / train_floor["samples_per_s"]
        if train_full and train_floor else None, 0.9, True)
    peak = train_full["peak_memory_mib"] / 1024 if train_full and train_full.get("peak_memory_mib") else None
    row("training b32 bf16: full model peak memory (GiB)", peak, 40.0, False)
    return rows


def format_targets(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        verdict = "not measured" if r["passed"] is None else ("PASS" if r["passed"] else "MISS")
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"{verdict:>12}  {r['target']}: {value} (limit {r['limit']})")
    return "\n".join(lines)


def summarise(out: Path) -> str:
    """Reads the step reports under ``out``, writes ``out/summary.json`` and returns the lines to print."""
    reports = {name: json.loads((out / f"{name}.json").read_text())
               for name in REPORTS if (out / f"{name}.json").is_file()}
    rows = gpu_targets(reports)
    summary = {"targets": rows, "ratios": {k: r.get("ratios", {}) for k, r in reports.items()},
               "data_loading": (reports.get("eager") or {}).get("data_loading")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = []
    for name, report in reports.items():
        for model, result in report["models"].items():
            for r in result["inference"]:
                lines.append(f"{name:9} {model:5} {r['mode']:11} b{r['batch_size']:<3} "
                             f"p50 {r['latency_p50_ms']:8.2f} ms p90 {r['latency_p90_ms']:8.2f} ms "
                             f"{r['images_per_s']:8.1f} img/s peak {(r['peak_memory_mib'] or 0) / 1024:6.2f} GiB")
            if result.get("train"):
                t = result["train"]
                lines.append(f"{name:9} {model:5} train       b{t['batch_size']:<3} "
                             f"step {t['step_p50_ms']:8.2f} ms {t['samples_per_s']:8.1f} samples/s "
                             f"peak {(t['peak_memory_mib'] or 0) / 1024:6.2f} GiB")
    if summary["data_loading"]:
        d = summary["data_loading"]
        lines.append(f"data loading: {d['workers_needed']} workers at {d['per_worker_samples_per_s']} samples/s "
                     f"each for {d['train_samples_per_s']} training samples/s")
    lines.append(format_targets(rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/gpu_targets.py OUT", file=sys.stderr)
        return 2
    print(summarise(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
