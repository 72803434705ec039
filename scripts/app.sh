#!/usr/bin/env bash
# Serve the web app on localhost (http://localhost:8501): set up, then `python -m nanocrystal app`, which picks the
# newest finished size run and recipe-only shape run in runs/ or, when there is none, names the command that makes it
# (bash scripts/best_size.sh, about 19 min; bash scripts/best_cls.sh, about 15 min) and exits 2.
# Arguments go to it: --size-run RUN, --shape-run RUN, --port N. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$PY" -m nanocrystal app "$@"
