#!/usr/bin/env bash
# Shared by the best_*.sh scripts: set up, train one preset over its folds, print the run folder and its metrics.
# Usage: scripts/run_task.sh NAME TRAIN_ARGS... -- USER_ARGS...   (user arguments win: argparse keeps the last; a user --save_path names the run)
# --seeds S... among the user arguments trains once per split seed (--seed S, run folders <save>-seed<S>), one after
# the other, then prints each seed's scores and their mean ± standard deviation (seed 0 is the paper's split).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
name=$1; shift
args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
[ $# -gt 0 ] && shift
source scripts/take_numbers.sh --seeds "$@"
seeds=(${numbers[@]+"${numbers[@]}"})
# a --save_path of the user's replaces the default (and is passed once)
source scripts/take_save_path.sh "runs/${name}-$(date +%Y%m%d-%H%M%S)" ${rest[@]+"${rest[@]}"}
start=$(date +%s)
if [ ${#seeds[@]} -eq 0 ]; then
  "$PY" train.py "${args[@]}" --save_path "$save" ${user[@]+"${user[@]}"}
  echo "run folder: $save  (wall time $(( $(date +%s) - start )) s)"
  "$PY" -m nanocrystal.task_tables summary "$save"
  exit 0
fi
runs=()
for seed in "${seeds[@]}"; do
  "$PY" train.py "${args[@]}" --seed "$seed" --save_path "$save-seed$seed" ${user[@]+"${user[@]}"}
  runs+=("$save-seed$seed")
done
echo "run folders: ${runs[*]}  (wall time $(( $(date +%s) - start )) s for ${#seeds[@]} seeds)"
"$PY" -m nanocrystal.task_tables seeds "${runs[@]}"
