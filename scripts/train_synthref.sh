#!/usr/bin/env bash
# Reproducible training recipe of the shipped SynthRef model (docs/synthref.md):
#   1. SynthRef 20k (train 20000, val/testA/testB 1000 each; reused when already generated with these settings),
#   2. lgrnet train with configs/synthref-tiny.yaml (resumable: rerun the script after an interruption),
#   3. export of the best checkpoint into src/lgrnet/weights/synthref-tiny/ (no text encoder, fp16, <= 20 MB,
#      with the val accuracy recorded on a fixed sample for tests/test_quickstart.py),
#   4. the learning curve (Acc@0.5 vs wall-clock and samples seen) and testA/testB metrics.
# Environment: PY (python, default .venv/bin/python), DATA (default data/synthref), OUT (default runs/synthref-tiny),
# SEED (default 0), DEVICE (auto|cpu|cuda). Extra arguments go to `lgrnet train`, e.g. --set train.epochs=10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/synthref}
OUT=${OUT:-runs/synthref-tiny}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
WEIGHTS=src/lgrnet/weights/synthref-tiny

echo "== 1/4 SynthRef 20k (seed $SEED) -> $DATA"
"$PY" -c "import sys; from lgrnet.synth import ensure_synthref; \
ensure_synthref(sys.argv[1], seed=int(sys.argv[2]), num_train=20000, num_val=1000, num_test=1000)" "$DATA" "$SEED"

echo "== 2/4 training configs/synthref-tiny.yaml -> $OUT"
"$PY" -m lgrnet.cli train --config configs/synthref-tiny.yaml --set "data.root=\"$DATA\"" \
    --output-dir "$OUT" --resume auto --device "$DEVICE" "$@"

echo "== 3/4 export the best checkpoint -> $WEIGHTS"
"$PY" scripts/export_shipped_model.py --run "$OUT" --out "$WEIGHTS"

echo "== 4/4 learning curve and test splits"
"$PY" scripts/learning_curve.py "$OUT" --png "$OUT/learning_curve.png" --markdown "$OUT/learning_curve.md"
for split in val testA testB; do
    "$PY" -m lgrnet.cli eval --checkpoint "$WEIGHTS" --data "synth:$DATA" --split "$split" --device "$DEVICE"
done
