#!/usr/bin/env bash
# Reaction-intermediate augmentation for the paper split (seed 0, 5 folds, 10 rows per training recipe) into
# data/augmented/: fold0.csv..fold4.csv + manifest.json. Prints rows written, rows dropped (duplicates) and the
# success rate. Extra arguments go to augment.py (e.g. --overwrite, --k 20, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$PY" augment.py --split paper --seed 0 --n_folds 5 --k 10 --out data/augmented "$@"
