#!/usr/bin/env bash
# Shared by the best_*.sh scripts: set up, train one preset over its folds, print the run folder and its metrics.
# Usage: scripts/run_task.sh NAME TRAIN_ARGS... -- USER_ARGS...   (user arguments win: argparse keeps the last; a user --save_path names the run)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
name=$1; shift
args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
[ $# -gt 0 ] && shift
# a --save_path of the user's replaces the default (and is passed once)
source scripts/take_save_path.sh "runs/${name}-$(date +%Y%m%d-%H%M%S)" "$@"
start=$(date +%s)
"$PY" train.py "${args[@]}" --save_path "$save" ${user[@]+"${user[@]}"}
run=$save
echo "run folder: $run  (wall time $(( $(date +%s) - start )) s)"
"$PY" -m nanocrystal.task_tables summary "$run"
