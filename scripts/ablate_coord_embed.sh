#!/usr/bin/env bash
# The paper's coordinate-embedding ablation (Table VII: with vs without) on SynthRef, for a fixed budget: two
# lgrnet-tiny runs that differ only in model.coord_embed ("qk", the reference, vs "none"), same seed, same data,
# same pre-trained backbone, same wall-clock budget, run side by side with one torch thread each, then evaluated
# on val, testA (expressions with the paper's spatial words) and testB (the rest). Results: $OUT/summary.json.
# Environment: PY, DATA (default data/synthref-60k), BACKBONE (default runs/synthref-tiny/backbone/
# backbone.safetensors), OUT (default runs/ablation-coord), MINUTES (default 15), SEED (default 7).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/synthref-60k}
BACKBONE=${BACKBONE:-runs/synthref-tiny/backbone/backbone.safetensors}
OUT=${OUT:-runs/ablation-coord}
MINUTES=${MINUTES:-15}
SEED=${SEED:-7}
for arm in qk none; do
    OMP_NUM_THREADS=1 "$PY" -m lgrnet.cli train --config configs/synthref-tiny.yaml --output-dir "$OUT/$arm" \
        --device cpu --set "data.root=\"$DATA\"" --set "model.visual.checkpoint=\"$BACKBONE\"" \
        --set "model.coord_embed=$arm" --set "train.seed=$SEED" --set "train.time_limit_minutes=$MINUTES" \
        --set train.epochs=100 --set train.eval_every=0 --set train.eval_every_steps=0 \
        --set train.checkpoint_every_steps=0 --set data.num_workers=0 > "$OUT.$arm.log" 2>&1 &
done
wait
for arm in qk none; do
    for split in val testA testB; do
        OMP_NUM_THREADS=2 "$PY" -m lgrnet.cli eval --checkpoint "$OUT/$arm/checkpoints/last" \
            --data "synth:$DATA" --split "$split" --device cpu | tail -1 > "$OUT/$arm/$split.json"
    done
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
for arm in ("qk", "none"):
    steps = [json.loads(line)["step"] for line in (out / arm / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
    summary[arm] = {"steps": max(steps, default=0),
                    **{split: json.loads((out / arm / f"{split}.json").read_text()) for split in ("val", "testA", "testB")}}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print("| coord_embed | steps | val Acc@0.5 | testA Acc@0.5 | testB Acc@0.5 |")
print("|---|---:|---:|---:|---:|")
for arm, row in summary.items():
    print(f"| {arm} | {row['steps']} | {row['val']['acc50']:.2f} | {row['testA']['acc50']:.2f} | {row['testB']['acc50']:.2f} |")
PY
