#!/usr/bin/env bash
# Start the app, load each page (Predict, Explore, Design with one search, Data) in headless Chromium, save a
# screenshot of each to assets/app_<page>.png, and fail if a page shows a Streamlit error or exception.
# Arguments go to `python -m nanocrystal app` (default: the newest finished runs in runs/), e.g.
#   bash scripts/app_check.sh --size-run runs/size-... --shape-run runs/shape-...-recipe
# Chromium is Debian's package (installed when absent); Playwright drives it (its own browser download is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
"$PY" -c "import playwright" 2>/dev/null || "$PY" -m pip install --quiet "playwright==1.65.2"
port=${APP_CHECK_PORT:-8599}
log=$(mktemp)
started=$(date +%s.%N)
"$PY" -m nanocrystal app --port "$port" "$@" > "$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
if ! "$PY" scripts/app_check.py --url "http://localhost:$port" --started "$started" --server-pid "$server" \
     --out assets; then
  echo "--- server log" >&2
  cat "$log" >&2
  exit 1
fi
