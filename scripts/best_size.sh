#!/usr/bin/env bash
# The main job: the best size model on the paper split. Placeholder until the size issue lands.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "best_size: not built yet (the size model is still being written; see issue tracker)" >&2
exit 1
