#!/usr/bin/env bash
# `make load`: requests/s and p50/p99 through the whole local stack (HTTP through cargo
# lambda, JWT, validation, DynamoDB limit, mTLS gRPC, WORKERS replicas) at concurrency 1,
# 16 and 64, closed loop (a new request as soon as one finishes), mixed over the demo
# models. Loopback only; LOAD_SECS per level.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${LOAD_SECS:-20}"
OUT=.local/load
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
stack_up "$OUT" WORKERS="${WORKERS:-2}" IHUB_DEV_CONCURRENCY=8

"$BIN/inferencehub-bench" load --rate 0 --concurrency 8 --duration 5s --quiet --json >/dev/null # warm-up
echo "| concurrency | requests | failed | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|"
for c in 1 16 64; do
  "$BIN/inferencehub-bench" load --rate 0 --concurrency "$c" --duration "${SECS}s" --quiet --json >"$OUT/c$c.json"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); c=sys.argv[2]; print("| %s | %d | %d | %.1f | %.1f | %.1f |" % (c, s["sent"], s["failed"], s["rps"], s["p50_ms"], s["p99_ms"]))' "$OUT/c$c.json" "$c"
done
