#!/usr/bin/env bash
# A Ray cluster on this machine: a head node (no CPUs of its own, so every fold runs on the worker) and one worker node
# started with `ray start`, then the same tiny run with --backend local and with --backend ray --ray_address of the
# head; fails unless every fold's metrics and predictions are identical. The two nodes are stopped by their process
# ids at the end (`ray stop` would stop every Ray on the machine).
#
#   bash scripts/ray_cluster_check.sh [--port 6391] [--keep DIR]     # about 2 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
port=6391
keep=""
while [ $# -gt 0 ]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
ray_bin="$(dirname "$PY")/ray"
[ -x "$ray_bin" ] || { echo "Ray is not installed: pip install 'nanocrystal[ray]'" >&2; exit 2; }
work=$(mktemp -d /tmp/nanocrystal-ray-XXXX)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$keep" ] && mkdir -p "$keep" && cp -r "$work"/runs "$keep"/ 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
export RAY_USAGE_STATS_ENABLED=0
# the nodes and the driver share a token of their own (Ray's token authentication)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
common=(--disable-usage-stats --block)
"$ray_bin" start --head --port "$port" --num-cpus 0 --temp-dir "$work/ray" --include-dashboard=false "${common[@]}" \
  >"$work/head.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "Ray runtime started" "$work/head.log" && break; sleep 1; done
grep -q "Ray runtime started" "$work/head.log" || { cat "$work/head.log" >&2; exit 1; }
"$ray_bin" start --address "127.0.0.1:$port" --num-cpus 2 "${common[@]}" >"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do grep -q "Ray runtime started" "$work/worker.log" && break; sleep 1; done
grep -q "Ray runtime started" "$work/worker.log" || { cat "$work/head.log" "$work/worker.log" >&2; exit 1; }
echo "head at 127.0.0.1:$port (0 CPUs), one worker node (2 CPUs)"
run=(--preset tiny --n_folds 2 --epochs 1 --threads 1 --workers 2 --calibration_folds 3)
start=$(date +%s)
"$PY" train.py "${run[@]}" --save_path "$work/runs/local" >"$work/local.log"
echo "--backend local: $(( $(date +%s) - start )) s"
start=$(date +%s)
"$PY" train.py "${run[@]}" --backend ray --ray_address "127.0.0.1:$port" --save_path "$work/runs/ray" >"$work/ray.log"
echo "--backend ray on the cluster: $(( $(date +%s) - start )) s"
"$PY" - "$work/runs/local" "$work/runs/ray" <<'EOF'
import json, sys
from pathlib import Path
local, ray = map(Path, sys.argv[1:])
for fold in ("fold0", "fold1"):
    a, b = (json.loads((run / f"{fold}.json").read_text()) for run in (local, ray))
    for key in ("metrics", "predictions", "calibration"):
        assert a[key] == b[key], f"{fold}: {key} differ between the backends"
assert json.loads((local / "metrics.json").read_text())["mean"] == json.loads((ray / "metrics.json").read_text())["mean"]
print("identical metrics, predictions and calibration on both backends:",
      json.loads((ray / "metrics.json").read_text())["mean"])
EOF
