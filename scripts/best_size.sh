#!/usr/bin/env bash
# The main job: size regression with the CPU preset on the paper split (seed 0), 5 folds, honest selection.
# Extra arguments go to train.py, e.g. --split grouped, --augmented data/augmented, --preset paper (GPU).
set -euo pipefail
exec bash "$(dirname "$0")/run_task.sh" size --task size --preset cpu -- "$@"
