#!/usr/bin/env bash
# The main job: size regression with the CPU preset on the paper split (seed 0), 5 folds, honest selection.
# The cpu preset averages the transformer ensemble with the fold's LightGBM (leaves of 20 rows) and extra-trees models at
# weight 0.8 (both fit log(size); LightGBM's weak-row weight chosen by inner CV on the fold's training rows): the
# weight and the models were chosen by inner cross-validation on training rows only (docs/size_model.md). Every
# prediction gets a 90 % conformal interval, calibrated on 10 inner folds of each fold's training rows
# (docs/uncertainty.md); the script ends with the coverage overall and by recipe series, beside the plain baseline's.
# Time: about 10 min on a 2-core machine once set up (10.0-10.3 min a seed on 2026-12-05; a fold's trees and
# transformer run as separate jobs), 50 min with --seeds 0 1 2 3 4; about 2 min more for the set-up of a fresh clone.
# The trees also read the chemistry columns (--chemistry_features: the product's element statistics, amounts by role,
# the recipe's cation and anion mmol), chosen on inner folds of both splits (docs/size_model.md).
# On new series: --split grouped --preset new_series (the tree weight 0.6 and all of LightGBM's candidates, chosen on
# the grouped inner folds: docs/size_model.md).
# Extra arguments go to train.py (they win over these), e.g. --split grouped, --augmented data/augmented,
# --tree_blend 0 --no-series_correction (the transformer alone), --preset paper (GPU).
set -euo pipefail
exec bash "$(dirname "$0")/run_task.sh" size --task size --preset cpu --chemistry_features -- "$@"
