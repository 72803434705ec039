#!/usr/bin/env bash
# Leave-one-product-out choices made without the four reported products: a copy of the recipe table without PbSe,
# Ag2S, Ni and Cs2NaBiCl6 (failures and shapes list as they are), and leave-one-product-out over four other products
# (default Au, Pd, PbS, InP: 107, 85, 77 and 66 recipes of <= 20 nm). Runs, one after the other, each model that
# best_new.sh could use: the transformer without the product token, the same with masked pretraining, LightGBM and
# extra trees with and without the product descriptor, LightGBM with it and the chemistry columns. Then
# `python -m nanocrystal.task_tables lopo` of each, and the blend table of bench/lopo_blend.py (transformer beside the
# trees at weight w). ~15 min on 2 cores.
# --full_table keeps the recipe table whole: with --products PbSe Ag2S Ni Cs2NaBiCl6 it runs the same candidates on
# the four reported products, for the upstream-style figure (the candidate chosen on the held-out product itself,
# as the paper's leave-one-product-out figures were) that lopo_blend.py prints, labelled, beside the honest one.
#
# --only NAME... runs only these candidates (the tables then cover the finished runs in the folder).
#
#   bash bench/lopo_proxy.sh [--out runs/lopo-proxy] [--products Au Pd PbS InP] [--full_table] [--only lgbm-product]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
out=runs/lopo-proxy
products=(Au Pd PbS InP)
data="$out/data"
full_table=false
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; data="$out/data"; shift 2 ;;
    --full_table) full_table=true; shift ;;
    --products) shift; products=(); while [ $# -gt 0 ] && [[ $1 != --* ]]; do products+=("$1"); shift; done ;;
    --only) shift; while [ $# -gt 0 ] && [[ $1 != --* ]]; do only+=("$1"); shift; done ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if $full_table; then data=data; fi
mkdir -p "$out"
$full_table || mkdir -p "$data"
$full_table || "$PY" - "$data" <<'EOF'
import shutil, sys
from pathlib import Path
import pandas as pd
from nanocrystal.recipes import FAILURES_FILE, RECIPES_FILE, SHAPES_FILE, PRODUCT_NAME
target = Path(sys.argv[1])
table = pd.read_csv(Path("data") / RECIPES_FILE)
kept = table[~table[PRODUCT_NAME].isin(["PbSe", "Ag2S", "Ni", "Cs2NaBiCl6"])]
kept.to_csv(target / (RECIPES_FILE + ".tmp"), index=False)
(target / (RECIPES_FILE + ".tmp")).replace(target / RECIPES_FILE)
for name in (FAILURES_FILE, SHAPES_FILE):
    shutil.copyfile(Path("data") / name, target / name)
print(f"{target}: {len(kept)} of {len(table)} recipes (the four reported products removed)")
EOF
# no intervals: the comparison is of the point predictions (a transformer's calibration would retrain it 10 times)
# LightGBM chooses from all its candidates, as best_new.sh's --preset new_product
common=(--task size --data_dir "$data" --object_name "${products[@]}" --calibration_folds 0
        --lgbm_grid leaf3 leaf20 new_series)
run() {  # name, then train.py arguments; a finished run is kept (its folder is never overwritten)
  local name=$1; shift
  if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then return; fi
  [ -f "$out/$name/metrics.json" ] || "$PY" train.py "${common[@]}" "$@" --save_path "$out/$name"
}
run transformer --preset cpu --no-use_product --tree_blend 0 --no-series_correction
run transformer-pretrain --preset cpu --no-use_product --tree_blend 0 --no-series_correction --pretrain_epochs 30
for model in lgbm et; do
  run "$model" --model "$model" --no-use_product
  run "$model-product" --model "$model" --use_product
done
run lgbm-product-chemistry --model lgbm --use_product --chemistry_features
for name in transformer transformer-pretrain lgbm lgbm-product et et-product lgbm-product-chemistry; do
  [ -f "$out/$name/metrics.json" ] || continue
  echo "== $name"; "$PY" -m nanocrystal.task_tables lopo "$out/$name"
done
"$PY" bench/lopo_blend.py "$out"
