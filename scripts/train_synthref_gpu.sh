#!/usr/bin/env bash
# SynthRef training on one GPU within a fixed wall-clock budget (docs/synthref.md, "GPU stage"): three runs share
# the GPU, each starting from the shipped CPU model (src/lgrnet/weights/synthref-small) and decaying a cosine
# schedule over the time it has (train.time_limit_minutes):
#   cont  the same lgrnet-tiny, continued at batch 128;
#   wide  lgrnet-small (configs/synthref-small.yaml: 6 reasoning layers of width 256); backbone, neck and
#         query-dynamic attention copied from the shipped model (scripts/transfer_weights.py), the rest fresh; lr 5e-4;
#   wide-hi  the same at lr 1e-3.
# Steps: 1. SynthRef (seed 0: the same val images as data/synthref-60k) with NUM_TRAIN train expressions,
# 2. the train images shrunk to 128 px (scripts/shrink_images.py; the loader then keeps up with the GPU on few
# cores), 3. the three runs in parallel, 4. each run's best checkpoint exported as a shipped-model folder (fp16),
# packed with its metrics log into RESULTS/<run>.tar (split into 15 MB parts when larger).
# Environment: PY (python3), DATA (data/synthref-gpu), RUNS_DIR (runs/gpu), RESULTS (RUNS_DIR/results), RUNS (which
# runs: "cont wide wide-hi"), INIT (the folder cont starts from: the shipped model; CONT_WIDE=1 when INIT is an
# lgrnet-small, such as a wide run's export), CONT_LR / CONT_LR_VISUAL (its
# peak rates, 5e-4 / 2e-4), TOTAL_SECONDS (540: the whole script's budget, training gets what the other steps
# leave), NUM_TRAIN (120000), WORKERS (data workers per run, 4), BATCH (128), DEVICE (cuda), PRECISION (bf16),
# EXPORT_RESERVE (75 s kept for step 4). A dry run on a CPU:
#   DEVICE=cpu PRECISION=off NUM_TRAIN=300 BATCH=8 WORKERS=0 TOTAL_SECONDS=200 scripts/train_synthref_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PY:-python3}
DATA=${DATA:-data/synthref-gpu}
RUNS_DIR=${RUNS_DIR:-runs/gpu}
RESULTS=${RESULTS:-$RUNS_DIR/results}
TOTAL_SECONDS=${TOTAL_SECONDS:-540}
NUM_TRAIN=${NUM_TRAIN:-120000}
WORKERS=${WORKERS:-4}
BATCH=${BATCH:-128}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
SHIPPED=src/lgrnet/weights/synthref-small
INIT=${INIT:-$SHIPPED}
RUNS=${RUNS:-cont wide wide-hi}
CONT_LR=${CONT_LR:-0.0005}
CONT_LR_VISUAL=${CONT_LR_VISUAL:-0.0002}
EXPORT_RESERVE=${EXPORT_RESERVE:-75}
WIDE=configs/synthref-small.yaml
CONT_CONFIG=configs/synthref-tiny.yaml
[ "${CONT_WIDE:-0}" = 1 ] && CONT_CONFIG=$WIDE
mkdir -p "$RUNS_DIR" "$RESULTS"
elapsed() { echo $(( $(date +%s) - START )); }

echo "== 1/4 SynthRef $NUM_TRAIN train + 1000 val -> $DATA ($(elapsed) s)"
"$PY" -c "import os, sys; from lgrnet.synth import ensure_synthref; \
ensure_synthref(sys.argv[1], seed=0, num_train=int(sys.argv[2]), num_val=1000, num_test=0, workers=os.cpu_count())" \
    "$DATA" "$NUM_TRAIN" || exit 1

echo "== 2/4 train images -> 128 px ($(elapsed) s)"
"$PY" scripts/shrink_images.py "$DATA" --split train --max-side 128 --out-split train-128 || exit 1
if [[ " $RUNS " == *" wide"* ]]; then
    "$PY" scripts/transfer_weights.py --source "$SHIPPED" --config "$WIDE" \
        --out "$RUNS_DIR/init-wide" || exit 1
fi

MINUTES=$("$PY" -c "import sys; print(round((int(sys.argv[1]) - int(sys.argv[2]) - int(sys.argv[3])) / 60, 2))" \
    "$TOTAL_SECONDS" "$(elapsed)" "$EXPORT_RESERVE")
echo "== 3/4 runs $RUNS in parallel, $MINUTES min each ($(elapsed) s)"
COMMON=(--device "$DEVICE" --set "data.root=\"$DATA\""
        --set data.train_split=train-128 --set data.num_workers="$WORKERS" --set train.batch_size="$BATCH"
        --set train.precision="$PRECISION" --set train.lr_schedule=cosine --set train.min_lr_ratio=0.02
        --set train.warmup_steps=300 --set train.epochs=1000 --set train.time_limit_minutes="$MINUTES"
        --set train.eval_every_steps=1000 --set train.checkpoint_every_steps=0 --set train.checkpoint_every=0
        --set train.log_every=100)
declare -A PIDS
run() {  # NAME CONFIG [--set ...]: start the run unless RUNS leaves it out
    local name=$1 config=$2
    shift 2
    [[ " $RUNS " == *" $name "* ]] || return 0
    "$PY" -m lgrnet.cli train --config "$config" "${COMMON[@]}" --output-dir "$RUNS_DIR/$name" "$@" \
        >"$RUNS_DIR/$name.log" 2>&1 &
    PIDS[$name]=$!
}
run cont "$CONT_CONFIG" --set "train.init_from=\"$INIT\"" --set train.seed=21 --set train.lr="$CONT_LR" \
    --set train.lr_visual="$CONT_LR_VISUAL" --set train.lr_neck_lateral="$CONT_LR" --set train.lr_qda="$CONT_LR"
run wide "$WIDE" --set "train.init_from=\"$RUNS_DIR/init-wide\"" --set train.seed=22 \
    --set train.lr=0.0005 --set train.lr_visual=0.0002 --set train.lr_neck_lateral=0.0005 --set train.lr_qda=0.0005
run wide-hi "$WIDE" --set "train.init_from=\"$RUNS_DIR/init-wide\"" --set train.seed=23 \
    --set train.lr=0.001 --set train.lr_visual=0.0002 --set train.lr_neck_lateral=0.0005 --set train.lr_qda=0.0005
for name in "${!PIDS[@]}"; do
    wait "${PIDS[$name]}"
    echo "$name: exit $? ($(elapsed) s); $(grep -c '"kind": "val"' "$RUNS_DIR/$name/metrics.jsonl" 2>/dev/null) validations"
    tr "\r" "\n" <"$RUNS_DIR/$name.log" | grep "val Acc" | tail -4
done

echo "== 4/4 export and pack -> $RESULTS ($(elapsed) s)"
for name in $RUNS; do
    if "$PY" scripts/export_shipped_model.py --run "$RUNS_DIR/$name" --out "$RUNS_DIR/export-$name" \
        --cache "$RUNS_DIR/export-sample" >"$RUNS_DIR/export-$name.log" 2>&1; then
        tail -1 "$RUNS_DIR/export-$name.log"
        cp "$RUNS_DIR/$name/metrics.jsonl" "$RUNS_DIR/$name.log" "$RUNS_DIR/export-$name/"
        tar -cf "$RESULTS/$name.tar" -C "$RUNS_DIR/export-$name" .
        if [ "$(stat -c %s "$RESULTS/$name.tar")" -gt 15000000 ]; then
            split -b 15000000 -d "$RESULTS/$name.tar" "$RESULTS/$name.tar.part" && rm "$RESULTS/$name.tar"
        fi
    else
        echo "$name: export failed"; tail -3 "$RUNS_DIR/export-$name.log"; tail -5 "$RUNS_DIR/$name.log"
        tail -c 20000 "$RUNS_DIR/$name.log" >"$RESULTS/$name-failed.log"
    fi
done
echo "done in $(elapsed) s"
