#!/usr/bin/env bash
# Reproducible training recipe of the shipped SynthRef model (docs/synthref.md):
#   1. SynthRef 60k (train 60000, val/testA/testB 1000 each; reused when already generated with these settings),
#   2. pre-training of the slim ResNet backbone on the train scenes' object annotations (dense colour/shape/size
#      labels; the SynthRef analogue of the reference's detection-pretrained backbone),
#   3. lgrnet train with configs/synthref-tiny.yaml starting from that backbone (resumable: rerun the script
#      after an interruption),
#   4. export of the best checkpoint into src/lgrnet/weights/synthref-tiny/ (no text encoder, fp16, <= 20 MB,
#      with the val accuracy recorded on a fixed sample for tests/test_quickstart.py),
#   5. the learning curve (Acc@0.5 vs wall-clock and samples seen) and testA/testB metrics.
# Environment: PY (python, default .venv/bin/python), DATA (default data/synthref-60k), OUT (default
# runs/synthref-tiny), SEED (default 0), DEVICE (auto|cpu|cuda), PRETRAIN_DATA (default data/synthref: the 20k
# set, whose 6667 train scenes the shipped backbone saw), PRETRAIN_MINUTES (default 16).
# Extra arguments go to `lgrnet train`, e.g. --set train.epochs=10.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/synthref-60k}
OUT=${OUT:-runs/synthref-tiny}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
PRETRAIN_DATA=${PRETRAIN_DATA:-data/synthref}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-16}
WEIGHTS=src/lgrnet/weights/synthref-tiny
BACKBONE="$OUT/backbone/backbone.safetensors"

echo "== 1/5 SynthRef 60k -> $DATA and 20k -> $PRETRAIN_DATA (seed $SEED)"
"$PY" -c "import sys; from lgrnet.synth import ensure_synthref; \
ensure_synthref(sys.argv[1], seed=int(sys.argv[3]), num_train=60000, num_val=1000, num_test=1000); \
ensure_synthref(sys.argv[2], seed=int(sys.argv[3]), num_train=20000, num_val=1000, num_test=1000)" \
    "$DATA" "$PRETRAIN_DATA" "$SEED"

echo "== 2/5 backbone pre-training on the SynthRef train scenes -> $BACKBONE"
if [ ! -f "$BACKBONE" ]; then
    "$PY" scripts/pretrain_synth_backbone.py --config configs/synthref-tiny.yaml --data "$PRETRAIN_DATA" \
        --minutes "$PRETRAIN_MINUTES" --seed "$SEED" --out "$BACKBONE"
fi

echo "== 3/5 training configs/synthref-tiny.yaml -> $OUT"
"$PY" -m lgrnet.cli train --config configs/synthref-tiny.yaml --set "data.root=\"$DATA\"" \
    --set "model.visual.checkpoint=\"$BACKBONE\"" --output-dir "$OUT" --resume auto --device "$DEVICE" "$@"

echo "== 4/5 export the best checkpoint -> $WEIGHTS"
"$PY" scripts/export_shipped_model.py --run "$OUT" --out "$WEIGHTS"

echo "== 5/5 learning curve and test splits"
"$PY" scripts/learning_curve.py "$OUT" --png "$OUT/learning_curve.png" --markdown "$OUT/learning_curve.md"
for split in val testA testB; do
    "$PY" -m lgrnet.cli eval --checkpoint "$WEIGHTS" --data "synth:$DATA" --split "$split" --device "$DEVICE"
done
