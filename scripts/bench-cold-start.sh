#!/usr/bin/env bash
# `make bench-cold-start`: the predict function's cold start at the CPU share Lambda gives
# each memory size (one vCPU at 1,769 MB: 512 MB is 0.29 of a core, 256 MB 0.145).
# The local stack comes up (DynamoDB, the release worker); the predict binary as it ships
# (release, stripped, x86 here) is started RUNS times per memory size inside a cgroup CPU
# quota, against `inferencehub-bench cold-start`'s minimal Lambda Runtime API, with the
# stack's configuration; each cold start answers one iris prediction, then WARM more.
# The table prices each size from infra/prices.json (arm64 GB-seconds, as deployed; the
# binary measured here is x86). MEMORY=1769,1024,512,256,128 picks the sizes, PERIOD the
# quota's period (default 10ms: the share is spread evenly, no burst of a whole 100 ms
# period's quota), PREDICT another predict binary to measure (a build to compare, or a
# wrapper script that profiles it), DYNAMODB_TLS=1 DynamoDB behind a TLS front as on AWS
# (dynalite speaks plain HTTP: without it the first answer has no TLS handshake with
# DynamoDB). Writes .local/cold-start/summary.json; the table goes to
# docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.local/cold-start
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
echo "== building the predict function as it ships (release, stripped)"
cargo build -q --release -p inferencehub-functions --bin predict
RELEASE="$(dirname "$BIN")/release"
echo "== bringing up the local stack (log: $OUT/dev.log)"
stack_up "$OUT" WORKERS=1 IHUB_DEV_WORKER_PROFILE=release
# The function's environment as Lambda's: the stack's settings (dev.env) with the worker
# client's certificate files, credentials in the environment (Lambda passes the role's
# there) and no AWS_CA_BUNDLE. The SDK's TLS client reads the system's CA certificates as
# this machine keeps them (a bundle and a directory; Lambda's image has both too).
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_SESSION_TOKEN=local
export IHUB_GATEWAY_RATE_LIMIT_TIERS=load=1000000000
export IHUB_GATEWAY_WORKER_TLS_CA="$IHUB_CERTS_DIR/ca.pem" \
  IHUB_GATEWAY_WORKER_TLS_CERT="$IHUB_CERTS_DIR/client.pem" \
  IHUB_GATEWAY_WORKER_TLS_KEY="$IHUB_CERTS_DIR/client.key"
unset AWS_CA_BUNDLE
python3 - "$IHUB_TOKEN" functions/events/predict-iris.json >"$OUT/event.json" <<'PY'
import json, sys
event = json.load(open(sys.argv[2]))
event["headers"]["authorization"] = "Bearer " + sys.argv[1]
print(json.dumps(event))
PY
PREDICT="${PREDICT:-$RELEASE/predict}"
echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $PREDICT $(du -hL "$PREDICT" | cut -f1)"
"$BIN/inferencehub-bench" cold-start --binary "$PREDICT" --event "$OUT/event.json" \
  --memory "${MEMORY:-1769,1024,512,256,128}" --period "${PERIOD:-10ms}" --runs "${RUNS:-7}" \
  --warm "${WARM:-20}" --log "$OUT/predict.log" --prices infra/prices.json --json "$OUT/summary.json" \
  ${DYNAMODB_TLS:+--dynamodb-tls "$IHUB_CERTS_DIR/ca.pem" "$IHUB_CERTS_DIR/server.pem" "$IHUB_CERTS_DIR/server.key"}
