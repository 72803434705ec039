#!/usr/bin/env bash
# The paper-scale model (--preset paper: 8 layers, d=256) on one GPU, 5 folds of the paper split in parallel, with its
# schedule cut to fit a wall-clock budget: a short lease cannot hold upstream's 200 + 8,000 epochs (about 410,000 steps).
#
#   bash bench/paper_gpu.sh [--budget_s SECONDS] [--save_path DIR] [--backend ray|local] [train.py flags...]
#
# 1. bench/throughput.py runs 5 copies at once (as the folds will) and gives the slowest copy's steps/s;
# 2. the epoch count is the most that fits --budget_s of training at that rate (multiples of 100, at most 8,000),
#    with pretraining at upstream's ratio (200 : 8,000). Only the clock chooses it: no validation figure is read.
# 3. train.py: the paper preset, plus the cpu preset's tree blend and series correction; metrics.json's "stages" holds
#    the paper model alone, then + trees, then + correction. --eval_every logs upstream's val-selected curve, labelled.
#    No conformal calibration: it would refit the paper model on 10 inner folds of each fold, 11 times the budget.
#    The folds run on the Ray backend (a Ray started for the command; each fold a task with 3 CPUs and 0.2 of the GPU;
#    docs/scale.md), or with --backend local in 5 processes of the local backend (a machine without Ray).
# Uses the python3 on the PATH (a GPU machine's own torch); the project's requirements must be importable.
set -euo pipefail
cd "$(dirname "$0")/.."
budget_s=360
save="runs/paper-gpu-$(date +%Y%m%d-%H%M%S)"
backend=ray
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --budget_s) budget_s=$2; shift 2 ;;
    --save_path) save=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
folds=5
steps_per_epoch=10  # ceil(2,469 training rows / batch 256), the same in every fold of the paper split
bench_log=$(mktemp)
pids=()
for k in $(seq $folds); do python3 bench/throughput.py --preset paper --device cuda --threads 1 --steps 400 \
  >"$bench_log.$k" 2>&1 & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || { cat "$bench_log".*; exit 1; }; done
cat "$bench_log".* | tee "$bench_log"
rate=$(grep -o '[0-9.]* steps/s' "$bench_log" | sort -n | head -1 | cut -d' ' -f1)
epochs=$(python3 -c "import sys; r, b, s = map(float, sys.argv[1:]); \
print(int(min(8000, r * b / (s * 1.025)) // 100 * 100))" "$rate" "$budget_s" "$steps_per_epoch")
[ "$epochs" -ge 100 ] || { echo "too slow for a ${budget_s} s budget: ${rate} steps/s per fold" >&2; exit 1; }
pretrain=$(( epochs / 40 ))
echo "slowest of $folds concurrent copies: $rate steps/s -> $epochs epochs + $pretrain pretraining epochs per fold"
start=$(date +%s)
python3 train.py --task size --preset paper --backend "$backend" --job_gpus 0.2 --workers $folds \
  --threads 3 --epochs "$epochs" --calibration_folds 0 \
  --pretrain_epochs "$pretrain" --eval_every $(( epochs / 10 )) --tree_blend 0.8 --blend_models lgbm et \
  --lgbm_seeds 3 --lgbm_huber_delta 0.05 --series_correction --save_path "$save" ${extra[@]+"${extra[@]}"}
echo "run folder: $save  (wall time $(( $(date +%s) - start )) s)"
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps(m['stages'], indent=2))" \
  "$save/metrics.json"
