#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with the locked requirements (requirements.txt, made by scripts/lock.sh)
# and the package itself (editable, so `nanocrystal` runs this checkout), then the dataset (verified by checksum).
# Reinstalls only when the lock or pyproject.toml changes. Sourced by the other scripts; leaves PY pointing at the
# virtualenv's python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
PY="$PWD/.venv/bin/python"
export PY
"$PY" -m nanocrystal fetch
