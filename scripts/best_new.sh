#!/usr/bin/env bash
# Leave-one-product-out size prediction for the paper's four products (PbSe, Ag2S, Ni, Cs2NaBiCl6): for each, the
# validation rows are every recipe of that product with 0 < size <= 20 nm, training is every other product's rows;
# fixed choices, nothing is chosen on a held-out product. The model (`--preset new_product`) is the cpu preset's
# LightGBM (log size, mean of 3 seeds; one of its three candidates and the weak-row weight by an inner CV that leaves
# out whole training products) with the product descriptor among its features. Chosen without the four products
# (bench/lopo_proxy.sh: the recipe table without them, leave-one-product-out over Au, Pd, PbS and InP; docs/lopo.md):
# mean MAE 3.10 nm against
# 3.29-3.31 for LightGBM or extra trees without the product, 3.23 for extra trees with it, 3.91 for the transformer
# (3.95 pretrained) and 3.35 or more for the transformer beside the trees. Prints MAE, MAPE, R² per product beside
# the paper's pretrain-finetune MAE, and the coverage and mean width of each product's 90 % intervals (calibrated on
# inner folds that leave out whole training products: docs/uncertainty.md).
#
# Time: about 2 min on the 2-core machine once set up (about 11 min with --shots 0 1 3 5 10). Results: docs/lopo.md.
#
# Extra arguments go to train.py (e.g. --object_name PbSe; --model transformer --no-use_product --tree_blend 0
# --no-series_correction for the transformer without the product token).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# --shots K... (taken out of the arguments) also runs the few-shot curve: for each K > 0, K random recipes of the
# product join its training rows at sample weight 10 (--shot_weight; chosen on the proxy products Au, Pd, PbS, InP
# with bench/few_shot_correction.py: docs/lopo.md) (3 draws per product, nested over K) and its other recipes are
# scored; LightGBM's candidate is chosen on inner folds that are few-shot folds too (baselines.few_shot_splits);
# no intervals for these runs (--calibration_folds 0, the curve is about the error); the table and assets/few_shot.png
# compare each K with the zero-shot run on the same recipes.
source scripts/take_numbers.sh --shots "$@"
shots=(${numbers[@]+"${numbers[@]}"})
source scripts/take_save_path.sh "runs/size-lopo-$(date +%Y%m%d-%H%M%S)" ${rest[@]+"${rest[@]}"}
lopo=(--task size --preset new_product --object_name PbSe Ag2S Ni Cs2NaBiCl6)
bash scripts/run_task.sh size-lopo "${lopo[@]}" -- ${user[@]+"${user[@]}"} --save_path "$save"
"$PY" -m nanocrystal.task_tables lopo "$save"
if [ ${#shots[@]} -gt 0 ]; then
  runs=("$save")
  for k in "${shots[@]}"; do
    [ "$k" = 0 ] && continue
    bash scripts/run_task.sh size-lopo "${lopo[@]}" --shots "$k" --shot_weight 10 --calibration_folds 0 -- \
      ${user[@]+"${user[@]}"} \
      --save_path "$save-${k}shot"
    runs+=("$save-${k}shot")
  done
  "$PY" -m nanocrystal.task_tables shots "${runs[@]}" --plot assets/few_shot.png
fi
