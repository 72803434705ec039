#!/usr/bin/env bash
# Shape classification (11 shapes + the failed-synthesis logit; the 5,245 failures train only the failed logit and are
# never scored) with the CPU preset on the paper split, 5 folds, fixed schedule (no selection on the held-out fold).
# Two runs one after the other, product token dropped as upstream (--no-use_product):
#   1. the measured size given as an input (--size_as_input): comparable to upstream's 0.893 accuracy;
#   2. recipe only: what a chemist knows before the synthesis.
# The cpu preset averages the transformer's shape probabilities with the mean of the fold's LightGBM and extra-trees
# classifiers (trained on the recipe rows, hyper-parameters by inner CV) at tree weight 0.8: on inner validation
# (docs/shape.md) 0.868 with the size given and 0.850 from the recipe alone, against 0.856 and
# 0.839 at weight 0.5.
# Then both runs' accuracy and weighted F1/recall/precision side by side. The measured-size run also keeps the
# transformer's held-out curve every 5 epochs (--eval_every 5; it chooses nothing and leaves the result unchanged) and
# prints, labelled, upstream's kind of figure: each fold's best checkpoint chosen on the fold itself, as the 0.893.
#
# Time: measured 15.5 min for both runs on the 2-core machine (fresh clone at fd291e1, set-up included; 7.0 + 6.4 min of
# training): 40 epochs x 1 member per fold, 5 folds on 2 workers; 50 min with --seeds 0 1 2 3 4 (2026-12-05).
# Accuracy: docs/shape.md.
#
# Extra arguments go to both runs (e.g. --split grouped, --use_product, --epochs 60). --save_path P names the two
# run folders P-sizein and P-recipe (pass the same P with --resume to finish an interrupted pair). --seeds S... runs
# each of the two once per split seed (folders P-sizein-seedS, P-recipe-seedS) and prints each one's scores by seed with
# their mean ± standard deviation instead of the side-by-side table (seed 0 is the paper's split).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/take_numbers.sh --seeds "$@"
seeds=(${numbers[@]+"${numbers[@]}"})
source scripts/take_save_path.sh "runs/shape-$(date +%Y%m%d-%H%M%S)" ${rest[@]+"${rest[@]}"}
[ ${#seeds[@]} -gt 0 ] && user+=(--seeds "${seeds[@]}")  # run_task.sh runs the seeds and prints their table
# one LightGBM fit per fold: averaging seeds (--lgbm_seeds) was validated for size only
common=(--task shape --preset cpu --no-use_product --epochs 40 --n_members 1 --lgbm_seeds 1)
bash scripts/run_task.sh shape-sizein "${common[@]}" --size_as_input --eval_every 5 -- ${user[@]+"${user[@]}"} \
  --save_path "$save-sizein"
bash scripts/run_task.sh shape-recipe "${common[@]}" -- ${user[@]+"${user[@]}"} --save_path "$save-recipe"
[ ${#seeds[@]} -gt 0 ] || "$PY" -m nanocrystal.task_tables shape "$save-sizein" "$save-recipe"
