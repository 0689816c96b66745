#!/usr/bin/env bash
# `make bench-per-call`: what one call costs beyond the worker's forward pass at batch 1.
# The release worker serves `sentiment` (MiniLM, one short sentence a call); the project's
# Rust gRPC client (`inferencehub-bench load`) calls it over mutual TLS on loopback, one
# call at a time, for ROUNDS rounds of BENCH_SECONDS each. Each answer carries its forward time
# (`compute_ms`); the table's last column is the median of wall time less that: the
# transport, the tokenizer and the hand-offs to and from the model thread.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}" SECONDS_EACH="${BENCH_SECONDS:-8}"
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
echo "== building the release worker and client"
cargo build -q --release -p inferencehub-worker -p inferencehub-bench
certs=.local/certs
dir="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
ln -s "$PWD/models/sentiment" "$dir/sentiment"
"$TARGET/release/inferencehub-worker" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --model-dir "$dir" --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" \
  --tls-client-ca "$certs/ca.pem" > "$dir/worker.out" 2> "$dir/worker.log" &
pid=$!
for _ in $(seq 600); do grep -q "^inferencehub-worker listening" "$dir/worker.out" && break; sleep 0.1; done
addr="$(sed -n 's/^inferencehub-worker listening grpc=\([^ ]*\).*/\1/p' "$dir/worker.out")"
[ -n "$addr" ] || { echo "the worker did not start:"; tail -5 "$dir/worker.log"; exit 1; }
export IHUB_GATEWAY_WORKER_TLS_CA="$certs/ca.pem" IHUB_GATEWAY_WORKER_TLS_CERT="$certs/client.pem" \
  IHUB_GATEWAY_WORKER_TLS_KEY="$certs/client.key"
for _ in $(seq 600); do
  "$TARGET/release/inferencehub-worker" health --addr "https://$addr" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; worker on $addr"
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS ($SECONDS_EACH s, 1 caller)"
  "$TARGET/release/inferencehub-bench" load --worker-addr "https://$addr" --models sentiment \
    --rate 0 --concurrency 1 --duration "${SECONDS_EACH}s" --quiet --timeout 60s
done
