#!/usr/bin/env bash
# `make dev`: brings the whole stack up locally, unattended, and prints how to call it.
#   local DynamoDB (LocalStack with Docker, else dynalite) + rate-limit table
#   -> inferencehub-worker on CPU (mTLS, demo models)
#   -> `cargo lambda watch` serving the predict, models and health functions
# Writes .local/dev.env for scripts. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL=.local
API_PORT="${IHUB_DEV_API_PORT:-9000}"
WORKER_PORT="${IHUB_DEV_WORKER_PORT:-50051}"
METRICS_PORT="${IHUB_DEV_METRICS_PORT:-9464}"
DYNAMODB_PORT="${IHUB_DEV_DYNAMODB_PORT:-4566}"
ISSUER="${IHUB_JWT_ISSUER:-https://inferencehub.local/dev}"
AUDIENCE="${IHUB_JWT_AUDIENCE:-inferencehub}"
TABLE="${IHUB_RATE_LIMIT_TABLE:-inferencehub-rate-limits}"
# Where cargo puts the binaries (honours CARGO_TARGET_DIR), asked of cargo itself.
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
mkdir -p "$LOCAL"

pids=()
compose=""
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "stopping the local stack..."
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # cargo lambda runs the functions as child processes; stop those too.
  pkill -TERM -f "cargo-lambda lambda watch -p inferencehub-functions" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$compose" ]; then
    docker compose -f localstack/docker-compose.yml down >/dev/null 2>&1 || true
  fi
  echo "stopped."
}
trap cleanup EXIT
trap 'exit 0' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 "${2:-120}"); do
    if ! port_free "$1"; then return 0; fi
    sleep 0.5
  done
  echo "nothing answered on port $1" >&2
  return 1
}
for port in "$API_PORT" "$WORKER_PORT" "$METRICS_PORT" "$DYNAMODB_PORT"; do
  port_free "$port" || { echo "port $port is in use: stop what holds it (or set IHUB_DEV_*_PORT)" >&2; exit 1; }
done

echo "== tools"
if ! command -v cargo-lambda >/dev/null 2>&1; then
  python3 -m pip install --quiet cargo-lambda ziglang
fi
make --no-print-directory -s models dynalite

echo "== build"
# One package at a time: `cargo lambda watch` runs `cargo run -p inferencehub-functions`,
# whose feature set is the functions package's own, so this build is the one it reuses.
cargo build --quiet -p inferencehub-worker --bins
cargo build --quiet -p inferencehub-tools --bin inferencehub-dev
cargo build --quiet -p inferencehub-functions --bins

echo "== certificates and signing keys (.local/)"
[ -f "$LOCAL/certs/health.pem" ] || "$BIN/inferencehub-dev" gen-certs --out "$LOCAL/certs" >/dev/null
"$BIN/inferencehub-dev" mint-token --keys-dir "$LOCAL/jwt" --issuer "$ISSUER" --audience "$AUDIENCE" >/dev/null

echo "== DynamoDB on 127.0.0.1:$DYNAMODB_PORT"
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DYNAMODB_PORT"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
if [ "$DYNAMODB_PORT" = 4566 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  compose=1
  IHUB_RATE_LIMIT_TABLE="$TABLE" docker compose -f localstack/docker-compose.yml up -d
  echo "LocalStack started"
else
  localstack/dynalite.sh "$DYNAMODB_PORT" >"$LOCAL/dynamodb.log" 2>&1 &
  pids+=($!)
  echo "no Docker engine: dynalite started (log: $LOCAL/dynamodb.log)"
fi
wait_port "$DYNAMODB_PORT" 240
"$BIN/inferencehub-dev" create-table --endpoint "$AWS_ENDPOINT_URL_DYNAMODB" --table "$TABLE"

echo "== worker on 127.0.0.1:$WORKER_PORT (log: $LOCAL/worker.log)"
"$BIN/inferencehub-worker" serve \
  --listen "127.0.0.1:$WORKER_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
  --model-dir models \
  --tls-cert "$LOCAL/certs/server.pem" --tls-key "$LOCAL/certs/server.key" \
  --tls-client-ca "$LOCAL/certs/ca.pem" \
  --tls-client-names inferencehub-gateway --tls-health-names inferencehub-health \
  >"$LOCAL/worker.log" 2>&1 &
pids+=($!)

echo "== functions: cargo lambda watch on 127.0.0.1:$API_PORT (log: $LOCAL/lambda.log)"
export IHUB_JWT_ISSUER="$ISSUER" IHUB_JWT_AUDIENCE="$AUDIENCE"
export IHUB_JWKS_FILE="$PWD/$LOCAL/jwt/dev-jwks.json"
export IHUB_WORKER_ADDR="https://127.0.0.1:$WORKER_PORT"
export IHUB_WORKER_CLIENT_TLS_CA="$PWD/$LOCAL/certs/ca.pem"
export IHUB_WORKER_CLIENT_TLS_CERT="$PWD/$LOCAL/certs/client.pem"
export IHUB_WORKER_CLIENT_TLS_KEY="$PWD/$LOCAL/certs/client.key"
export IHUB_RATE_LIMIT_TABLE="$TABLE"
cargo-lambda lambda watch -p inferencehub-functions --invoke-address 127.0.0.1 --invoke-port "$API_PORT" \
  >"$LOCAL/lambda.log" 2>&1 &
pids+=($!)

BASE="http://127.0.0.1:$API_PORT/lambda-url"
echo "== waiting for $BASE/health/healthz"
for i in $(seq 1 600); do
  if curl -sf -o /dev/null "$BASE/health/healthz"; then break; fi
  if [ "$i" = 600 ]; then
    echo "the stack did not become healthy; see $LOCAL/*.log" >&2
    exit 1
  fi
  sleep 1
done

TOKEN="$("$BIN/inferencehub-dev" mint-token --keys-dir "$LOCAL/jwt" --issuer "$ISSUER" --audience "$AUDIENCE" --sub dev-user --scope predict --ttl 1h)"
cat >"$LOCAL/dev.env" <<ENV
IHUB_PREDICT_URL=$BASE/predict/v1/predict
IHUB_MODELS_URL=$BASE/models/v1/models
IHUB_HEALTH_URL=$BASE/health/healthz
IHUB_TOKEN=$TOKEN
IHUB_JWT_PRIVATE_KEY=$PWD/$LOCAL/jwt/dev-jwt.pem
IHUB_JWKS_FILE=$PWD/$LOCAL/jwt/dev-jwks.json
IHUB_JWT_ISSUER=$ISSUER
IHUB_JWT_AUDIENCE=$AUDIENCE
IHUB_WORKER_ADDR=https://127.0.0.1:$WORKER_PORT
IHUB_WORKER_METRICS_URL=http://127.0.0.1:$METRICS_PORT/metrics
IHUB_CERTS_DIR=$PWD/$LOCAL/certs
AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB
IHUB_RATE_LIMIT_TABLE=$TABLE
ENV

cat <<MSG

InferenceHub is up. Everything is in $LOCAL/dev.env (token valid for 1 hour).

  curl -s $BASE/predict/v1/predict \\
    -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model_name":"sentiment","prompt":"The support team fixed it in minutes, thank you!"}'

  curl -s $BASE/predict/v1/predict \\
    -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}'

  curl -s $BASE/predict/v1/predict \\
    -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model_name":"wine","features":[13.32,3.24,2.38,21.5,92,1.93,0.76,0.45,1.25,8.42,0.55,1.62,650]}'

  curl -s $BASE/models/v1/models -H "Authorization: Bearer $TOKEN"
  curl -s $BASE/health/healthz

A new token: $BIN/inferencehub-dev mint-token --keys-dir $LOCAL/jwt --sub alice --scope predict --ttl 1h
Press Ctrl-C to stop everything.
MSG

wait "${pids[@]}"
