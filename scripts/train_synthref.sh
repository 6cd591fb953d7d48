#!/usr/bin/env bash
# Reproducible training recipe of the CPU SynthRef model (docs/synthref.md, steps 1-5), which the shipped model
# continues with two GPU stages (scripts/train_synthref_gpu.sh) and one more CPU stage (docs/synthref.md, steps
# 6-8). Step 4 below writes the CPU model into src/lgrnet/weights/synthref-small/, where the GPU stages start from it.
#   1. SynthRef 60k (train 60000, val/testA/testB 1000 each; reused when already generated with these settings),
#   2. pre-training of the slim ResNet backbone on the train scenes' object annotations (dense colour/shape/size
#      labels; the SynthRef analogue of the reference's detection-pretrained backbone),
#   3. lgrnet train with configs/synthref-tiny.yaml in three stages that continue one another (train.init_from):
#      a. $OUT: from that backbone, step schedule (lr x0.1 after epoch 2), 9000 steps;
#      b. $OUT-r2: from a's best checkpoint, constant preset learning rate, 3000 steps;
#      c. $OUT-r3: from b's final checkpoint (step 3000), cosine decay from half the preset learning rates, 12500 steps.
#      (Stage a is the run the first shipped model came from; b and c continued it. A stage whose final
#      checkpoint exists is skipped; an interrupted stage resumes when the script is rerun.)
#   4. export of stage c's best checkpoint into src/lgrnet/weights/synthref-small/ (no text encoder, fp16,
#      <= 20 MB, with the val accuracy recorded on a fixed sample for tests/test_quickstart.py),
#   5. the learning curve over the three stages (Acc@0.5 vs wall-clock and samples seen) and the test splits.
# Environment: PY (python, default .venv/bin/python), DATA (default data/synthref-60k), OUT (default
# runs/synthref-tiny), SEED (default 0), DEVICE (auto|cpu|cuda), PRETRAIN_DATA (default data/synthref: the 20k
# set, whose 6667 train scenes the shipped backbone saw), PRETRAIN_MINUTES (default 16).
# Extra arguments go to every `lgrnet train` stage, e.g. --set train.precision=bf16 on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/synthref-60k}
OUT=${OUT:-runs/synthref-tiny}
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
PRETRAIN_DATA=${PRETRAIN_DATA:-data/synthref}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-16}
WEIGHTS=src/lgrnet/weights/synthref-small
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

echo "== 3/5 training configs/synthref-tiny.yaml in three stages -> $OUT, $OUT-r2, $OUT-r3"
train() {  # OUT_DIR FINAL_CHECKPOINT [--set ...]: one stage, skipped when its final checkpoint exists
    local out=$1 final=$2
    shift 2
    if [ ! -f "$out/checkpoints/$final/COMPLETE" ]; then
        "$PY" -m lgrnet.cli train --config configs/synthref-tiny.yaml --set "data.root=\"$DATA\"" \
            --output-dir "$out" --resume auto --device "$DEVICE" "$@"
    fi
}
train "$OUT" step-00009000 --set "model.visual.checkpoint=\"$BACKBONE\"" \
    --set train.epochs=3 --set "train.lr_drop_epochs=[2]" --set train.max_steps=9000 "$@"
train "$OUT-r2" step-00003000 --set "train.init_from=\"$OUT/checkpoints/best\"" \
    --set train.epochs=8 --set "train.lr_drop_epochs=[]" --set train.max_steps=3000 --set train.seed=8 "$@"
train "$OUT-r3" step-00012500 --set "train.init_from=\"$OUT-r2/checkpoints/step-00003000\"" \
    --set train.epochs=8 --set train.lr_schedule=cosine --set train.max_steps=12500 --set train.min_lr_ratio=0.02 \
    --set train.lr=0.00025 --set train.lr_visual=0.0001 --set train.lr_neck_lateral=0.00025 \
    --set train.lr_qda=0.00025 --set train.seed=9 "$@"

echo "== 4/5 export the best checkpoint -> $WEIGHTS"
"$PY" scripts/export_shipped_model.py --run "$OUT-r3" --out "$WEIGHTS"

echo "== 5/5 learning curve and test splits"
"$PY" scripts/learning_curve.py "$OUT:9000" "$OUT-r2:3000" "$OUT-r3" --png "$OUT-r3/learning_curve.png" \
    --markdown "$OUT-r3/learning_curve.md" --json "$OUT-r3/learning_curve.json"
for split in val testA testB; do
    "$PY" -m lgrnet.cli eval --checkpoint "$WEIGHTS" --data "synth:$DATA" --split "$split" --device "$DEVICE"
done
