#!/usr/bin/env bash
# The test command: set up (virtualenv, requirements, data), then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$PY" -m pytest -q tests "$@"
