#!/usr/bin/env bash
# The SynthRef-G model (configs/synthref-g.yaml: lgrnet-small with the generalized head, 5 tokens) trained on one GPU
# within a fixed wall-clock budget, measured and exported in the same call (docs/synthref.md, "Training the
# SynthRef-G model on a GPU"). Steps:
#   1. SynthRef-G, seed 0: NUM_TRAIN train, NUM_VAL val, NUM_TEST testA and testB expressions; beside it the
#      classic SynthRef val/testA/testB of seed 0 (the same images and expressions as data/synthref-60k's val:
#      every image comes from (seed, split, index), whatever the number of train expressions);
#   2. the train images shrunk to 128 px (scripts/shrink_images.py, so that few cores keep the GPU fed; if the
#      shrink fails the run reads the original images);
#   3. the start: INIT (default the shipped SynthRef model) through scripts/transfer_weights.py, or INIT itself when
#      it already has the generalized head (a previous SynthRef-G export);
#   4. one run, batch 128, bf16, a cosine schedule over the time left (train.time_limit_minutes), validated every
#      EVAL_EVERY steps and at the end (checkpoints/best: the best Precision@(F1=1) on val);
#   5. lgrnet eval of the best checkpoint: SynthRef-G val with the threshold sweep, the most precise threshold with
#      N-acc >= 90 saved into the checkpoint (--min-n-acc 90 --save-threshold), then SynthRef-G testA/testB and the
#      classic val/testA/testB at it;
#   6. the export (scripts/export_shipped_model.py, fp16, with a SynthRef-G sample recorded; its config.yaml keeps
#      the training settings of configs/synthref-g.yaml, those a CPU fine-tune starts from) packed with the logs
#      and evaluations (under logs/) into RESULTS/synthref-g-small.tar (split into 15 MB parts when larger).
# RESULTS also gets each evaluation as eval-<data>-<split>.json (lgrnet eval's JSON) and .txt (its readable GREC
# report), the run's metrics.jsonl and summary.txt (the headline figures).
# Environment: PY (python3), DATA (data/synthref-g-gpu), CLASSIC (DATA-classic: the classic sets), RUNS_DIR
# (runs/gpu-g), RESULTS (RUNS_DIR/results), INIT (src/lgrnet/weights/synthref-small), TOTAL_SECONDS (480: the whole
# script's budget, training gets what the other steps leave), EXPORT_RESERVE (90 s kept for steps 5-6), NUM_TRAIN
# (120000), NUM_VAL and NUM_TEST (1000), WORKERS (data workers of the run, 12), BATCH (128), DEVICE (cuda),
# PRECISION (bf16), LR (2.5e-4: also the neck's lateral and query-dynamic attention's rate), LR_VISUAL (1e-4),
# WARMUP (200 steps), EVAL_EVERY (500 steps), SEED (41). A dry run on a CPU:
#   DEVICE=cpu PRECISION=off NUM_TRAIN=200 NUM_VAL=30 NUM_TEST=30 BATCH=8 WORKERS=0 TOTAL_SECONDS=240 \
#       DATA=/tmp/g/data RUNS_DIR=/tmp/g/runs scripts/train_synthref_g_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
PY=${PY:-python3}
DATA=${DATA:-data/synthref-g-gpu}
DATA=${DATA%/}
CLASSIC=${CLASSIC:-$DATA-classic}
RUNS_DIR=${RUNS_DIR:-runs/gpu-g}
RESULTS=${RESULTS:-$RUNS_DIR/results}
INIT=${INIT:-src/lgrnet/weights/synthref-small}
TOTAL_SECONDS=${TOTAL_SECONDS:-480}
EXPORT_RESERVE=${EXPORT_RESERVE:-90}
NUM_TRAIN=${NUM_TRAIN:-120000}
NUM_VAL=${NUM_VAL:-1000}
NUM_TEST=${NUM_TEST:-1000}
WORKERS=${WORKERS:-12}
BATCH=${BATCH:-128}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
LR=${LR:-0.00025}
LR_VISUAL=${LR_VISUAL:-0.0001}
WARMUP=${WARMUP:-200}
EVAL_EVERY=${EVAL_EVERY:-500}
SEED=${SEED:-41}
CONFIG=configs/synthref-g.yaml
RUN=$RUNS_DIR/train
NAME=synthref-g-small
EXPORT=$RUNS_DIR/$NAME
EVAL_WORKERS=$(( WORKERS < 3 ? WORKERS : 3 ))  # per evaluation: five of them share the cores in step 5
elapsed() { echo $(( $(date +%s) - START )); }
fail() {  # stops the transfer of step 3 too when it is still running
    echo "train_synthref_g_gpu: error: $*" >&2
    [ -n "${TRANSFER_PID:-}" ] && kill "$TRANSFER_PID" 2>/dev/null
    exit 1
}

# Everything that can be wrong before the slow part.
[ -f "$INIT/model.safetensors" ] || fail "INIT $INIT: no model.safetensors (a model folder is needed)"
if [ -d "$RUN" ] && [ -n "$(ls -A "$RUN")" ]; then
    fail "$RUN is not empty (a previous run?): choose another RUNS_DIR or remove it"
fi
mkdir -p "$RUNS_DIR" "$RESULTS" || fail "cannot create $RUNS_DIR or $RESULTS"
INIT_GREC=$("$PY" -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])) or {}; \
print(int(bool(((c.get('model') or {}).get('grec') or {}).get('enabled'))))" "$INIT/config.yaml") \
    || fail "INIT $INIT: cannot read its config.yaml"
# The exported folder's training settings are those of $CONFIG (what a fine-tune of the model on a CPU starts
# from), not this run's GPU settings (batch 128, bf16, 128 px train split, ...).
mapfile -t EXPORT_SETTINGS < <("$PY" -c "import json, sys; from lgrnet.config import load_config; \
config = load_config(sys.argv[1]).to_dict(); \
[print('--set', f'train.{k}={json.dumps(v)}', sep='\n') for k, v in config['train'].items() \
 if k not in ('init_from', 'time_limit_minutes', 'max_steps')]; \
[print('--set', f'data.{k}={json.dumps(config[\"data\"][k])}', sep='\n') for k in ('train_split', 'num_workers')]" \
    "$CONFIG")
[ "${#EXPORT_SETTINGS[@]}" -gt 0 ] || fail "cannot read $CONFIG"

# Step 3 first, in the background: the transfer mostly loads files while step 1 keeps the cores busy.
if [ "$INIT_GREC" = 1 ]; then
    START_FROM=$INIT
    echo "== start: $INIT (already has the generalized head)"
else
    START_FROM=$RUNS_DIR/init
    echo "== start: $INIT -> $START_FROM (scripts/transfer_weights.py, $CONFIG)"
    "$PY" scripts/transfer_weights.py --source "$INIT" --config "$CONFIG" --out "$START_FROM" \
        >"$RUNS_DIR/transfer.log" 2>&1 &
    TRANSFER_PID=$!
fi

echo "== 1/6 SynthRef-G $NUM_TRAIN train, $NUM_VAL val, $NUM_TEST testA/testB -> $DATA; classic val/test -> $CLASSIC" \
    "($(elapsed) s)"
"$PY" -c "import os, sys; from lgrnet.synth import ensure_synthref; \
n_train, n_val, n_test = (int(v) for v in sys.argv[3:6]); \
ensure_synthref(sys.argv[1], seed=0, num_train=n_train, num_val=n_val, num_test=n_test, workers=os.cpu_count(), \
grec=True); \
ensure_synthref(sys.argv[2], seed=0, num_train=0, num_val=n_val, num_test=n_test, workers=os.cpu_count())" \
    "$DATA" "$CLASSIC" "$NUM_TRAIN" "$NUM_VAL" "$NUM_TEST" || fail "generating the data failed"

echo "== 2/6 train images -> 128 px ($(elapsed) s)"
if "$PY" scripts/shrink_images.py "$DATA" --split train --max-side 128 --out-split train-128 \
        >"$RUNS_DIR/shrink.log" 2>&1; then
    TRAIN_SPLIT=train-128
    tail -1 "$RUNS_DIR/shrink.log"
else
    TRAIN_SPLIT=train
    echo "warning: shrinking failed, the run reads the original train images:"; tail -2 "$RUNS_DIR/shrink.log"
fi

if [ -n "${TRANSFER_PID:-}" ]; then
    wait "$TRANSFER_PID"
    TRANSFER_RC=$?
    unset TRANSFER_PID
    [ "$TRANSFER_RC" = 0 ] || { tail -5 "$RUNS_DIR/transfer.log"; fail "transfer_weights failed"; }
    tail -1 "$RUNS_DIR/transfer.log"
fi

# At least a minute: the steps before took longer than planned when this is less (the total then runs over).
MINUTES=$("$PY" -c "import sys; print(max(1.0, round((int(sys.argv[1]) - int(sys.argv[2]) - int(sys.argv[3])) / 60, \
2)))" "$TOTAL_SECONDS" "$(elapsed)" "$EXPORT_RESERVE")
[ "$MINUTES" = 1.0 ] && echo "warning: $(elapsed) s of $TOTAL_SECONDS spent before training; it gets 1 minute"
echo "== 3-4/6 train $CONFIG from $START_FROM for $MINUTES min, batch $BATCH, lr $LR / visual $LR_VISUAL" \
    "($(elapsed) s)"
# train.eval_every 1000 (epochs): validations come from eval_every_steps and the end of the run only.
"$PY" -m lgrnet.cli train --config "$CONFIG" --device "$DEVICE" --output-dir "$RUN" \
    --set "data.root=\"$DATA\"" --set "data.train_split=\"$TRAIN_SPLIT\"" --set data.num_workers="$WORKERS" \
    --set "train.init_from=\"$START_FROM\"" --set train.seed="$SEED" --set train.batch_size="$BATCH" \
    --set train.precision="$PRECISION" --set train.lr="$LR" --set train.lr_visual="$LR_VISUAL" \
    --set train.lr_neck_lateral="$LR" --set train.lr_qda="$LR" --set train.lr_schedule=cosine \
    --set train.min_lr_ratio=0.02 --set train.warmup_steps="$WARMUP" --set train.epochs=1000 \
    --set train.time_limit_minutes="$MINUTES" --set train.eval_every=1000 \
    --set train.eval_every_steps="$EVAL_EVERY" --set train.checkpoint_every_steps=0 --set train.checkpoint_every=0 \
    --set train.log_every=100 >"$RUNS_DIR/train.log" 2>&1
TRAIN_RC=$?
echo "train: exit $TRAIN_RC ($(elapsed) s); $(grep -c '"kind": "val"' "$RUN/metrics.jsonl" 2>/dev/null) validations"
tr "\r" "\n" <"$RUNS_DIR/train.log" | grep "val Acc" | tail -6
cp "$RUNS_DIR/train.log" "$RUN/metrics.jsonl" "$RESULTS/" 2>/dev/null
CKPT=$RUN/checkpoints/best
[ -f "$CKPT/model.safetensors" ] || CKPT=$RUN/checkpoints/last
if [ ! -f "$CKPT/model.safetensors" ]; then
    tail -c 20000 "$RUNS_DIR/train.log" >"$RESULTS/train-failed.log"
    tail -5 "$RUNS_DIR/train.log"
    fail "the run left no checkpoint"
fi

evaluate() {  # NAME DATA SPLIT WORKERS [lgrnet eval options]: RESULTS/eval-NAME.json (+ .txt)
    local name=$1 data=$2 split=$3 workers=$4
    shift 4
    "$PY" -m lgrnet.cli eval --checkpoint "$CKPT" --data "synth:$data,num_workers=$workers" --split "$split" \
        --device "$DEVICE" "$@" >"$RESULTS/eval-$name.json" 2>"$RESULTS/eval-$name.txt" \
        || { echo "eval $name failed:"; tail -3 "$RESULTS/eval-$name.txt"; }
}
echo "== 5/6 evaluate $CKPT: SynthRef-G val, threshold sweep ($(elapsed) s)"
evaluate g-val "$DATA" val "$WORKERS" --sweep --min-n-acc 90 --save-threshold
grep -v "^ \{4,\}[0-9]" "$RESULTS/eval-g-val.txt" | tail -8

echo "== 5-6/6 SynthRef-G testA/testB, classic val/testA/testB, export in parallel ($(elapsed) s)"
"$PY" scripts/export_shipped_model.py --checkpoint "$CKPT" --out "$EXPORT" --cache "$RUNS_DIR/export-sample" \
    --source "SynthRef-G GPU run (scripts/train_synthref_g_gpu.sh), best checkpoint" "${EXPORT_SETTINGS[@]}" \
    >"$RUNS_DIR/export.log" 2>&1 &
EXPORT_PID=$!
EVAL_PIDS=()
for split in testA testB; do
    evaluate "g-$split" "$DATA" "$split" "$EVAL_WORKERS" & EVAL_PIDS+=($!)
done
for split in val testA testB; do
    evaluate "classic-$split" "$CLASSIC" "$split" "$EVAL_WORKERS" & EVAL_PIDS+=($!)
done
wait "${EVAL_PIDS[@]}"
"$PY" - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.txt"
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])
# The figures at the score threshold the checkpoint now holds: the val row reads the sweep at the threshold it
# chose (the top box's Acc@0.5 does not depend on it); the other sets were evaluated at it.
columns = (("Prec@F1=1", "grec_precision", "precision"), ("N-acc", "grec_n_acc", "n_acc"),
           ("T-acc", "grec_t_acc", "t_acc"), ("single Acc@0.5", "grec_single_acc50", None),
           ("Acc@0.5", "acc50", None), ("threshold", "grec_threshold", "threshold"))
print(f"{'eval':<14}" + "".join(f"{label:>16}" for label, _, _ in columns) + f"{'expressions':>13}")
for data in ("g", "classic"):
    for split in ("val", "testA", "testB"):
        name = f"{data}-{split}"
        try:
            metrics = json.loads((results / f"eval-{name}.json").read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            print(f"{name:<14}(no result)")
            continue
        row = {}
        if "grec_sweep" in metrics:
            row = next(r for r in metrics["grec_sweep"] if r["threshold"] == metrics["grec_best_threshold"])
        cells = [row[sweep_key] if sweep_key in row else metrics.get(key) for _, key, sweep_key in columns]
        print(f"{name:<14}" + "".join(f"{'-' if v is None else format(v, '.2f'):>16}" for v in cells)
              + f"{metrics.get('count', 0):>13}")
EOF

if wait "$EXPORT_PID"; then
    tail -1 "$RUNS_DIR/export.log"
    mkdir -p "$EXPORT/logs"  # beside the model folder's own files, not part of them
    cp "$RUN/metrics.jsonl" "$RUNS_DIR/train.log" "$RESULTS"/eval-*.json "$RESULTS"/eval-*.txt \
        "$RESULTS/summary.txt" "$EXPORT/logs/" 2>/dev/null
    tar -cf "$RESULTS/$NAME.tar" -C "$EXPORT" .
    if [ "$(stat -c %s "$RESULTS/$NAME.tar")" -gt 15000000 ]; then
        split -b 15000000 -d "$RESULTS/$NAME.tar" "$RESULTS/$NAME.tar.part" && rm "$RESULTS/$NAME.tar"
    fi
    ls "$RESULTS" | grep "^$NAME"
else
    echo "export failed:"; tail -3 "$RUNS_DIR/export.log"
    cp "$RUNS_DIR/export.log" "$RESULTS/export-failed.log"
fi
echo "done in $(elapsed) s"
