#!/usr/bin/env bash
# `make dev`: brings the whole stack up locally, unattended, and prints how to call it.
#   local DynamoDB (LocalStack with Docker, else dynalite) + rate-limit table
#   -> inferencehub-worker on CPU (mTLS, demo models); WORKERS=N replicas on their own ports;
#      POOLS=2: two worker pools, the text models in one (WORKERS replicas) and the others
#      in a second (one worker), each model's calls routed to its pool by the gateway
#   -> `cargo lambda watch` serving the predict, models and health functions
#   -> the same functions over plain HTTP for the binary Open Inference Protocol
# Writes .local/dev.env for scripts and .local/pids/ (one file per process group it
# started). When a process it started exits during start-up, it stops at once and shows
# that process's log. Ctrl-C or SIGTERM stops exactly those process groups, nothing else:
# SIGTERM first, SIGKILL for whatever is still there 10 s later.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL=.local
API_PORT="${IHUB_DEV_API_PORT:-9000}"
# The workers' gRPC and metrics ports are the stack's own business (the gateway and
# .local/dev.env are told them): unless set, each worker takes the next free port from
# 50051 and 9464 on, so a machine where something already holds 50052 or 9465 still
# brings WORKERS=2 up. A port set here must be free, as must the API, OIP and DynamoDB
# ports (what users call).
WORKER_PORT="${IHUB_DEV_WORKER_PORT:-}"
METRICS_PORT="${IHUB_DEV_METRICS_PORT:-}"
DYNAMODB_PORT="${IHUB_DEV_DYNAMODB_PORT:-4566}"
V2_PORT="${IHUB_DEV_V2_PORT:-9001}"
ISSUER="${IHUB_GATEWAY_JWT_ISSUER:-https://inferencehub.local/dev}"
AUDIENCE="${IHUB_GATEWAY_JWT_AUDIENCE:-inferencehub}"
TABLE="${IHUB_GATEWAY_RATE_LIMIT_TABLE:-inferencehub-rate-limits}"
MODEL_DIR="${IHUB_DEV_MODEL_DIR:-models}"
WORKERS="${WORKERS:-1}"
case "$WORKERS" in
  '' | *[!0-9]* | 0) echo "WORKERS must be a positive number, not '$WORKERS'" >&2; exit 1 ;;
esac
POOLS="${POOLS:-1}"
case "$POOLS" in
  1 | 2) ;;
  *) echo "POOLS must be 1 or 2, not '$POOLS'" >&2; exit 1 ;;
esac
# Where cargo puts the binaries (honours CARGO_TARGET_DIR), asked of cargo itself.
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET/debug"
# IHUB_DEV_WORKER_PROFILE=release runs the workers as an optimised build (measurements of
# the whole stack, e.g. make cost-report); the default debug build starts sooner.
WORKER_PROFILE="${IHUB_DEV_WORKER_PROFILE:-debug}"
case "$WORKER_PROFILE" in
  debug) WORKER_BIN="$BIN/inferencehub-worker" ;;
  release) WORKER_BIN="$TARGET/release/inferencehub-worker" ;;
  *) echo "IHUB_DEV_WORKER_PROFILE must be debug or release, not '$WORKER_PROFILE'" >&2; exit 1 ;;
esac
mkdir -p "$LOCAL"
rm -rf "$LOCAL/pids"
mkdir -p "$LOCAL/pids"

started_at=$SECONDS
step() { printf '== [%3ds] %s\n' "$((SECONDS - started_at))" "$*"; }

# Every long-running child starts in a process group of its own (setsid; its pid is the
# group id), so stopping signals exactly what this script started, children included
# (cargo lambda runs the functions as its children), and never the same command started
# from another checkout.
pids=() names=() logs=()
compose="" prepare=""
start_group() { # name, log file, command...
  local name=$1 log=$2; shift 2
  setsid "$@" >"$log" 2>&1 &
  pids+=($!) names+=("$name") logs+=("$log")
  echo $! >"$LOCAL/pids/$name.pid"
}
alive() { kill -0 -- "-$1" 2>/dev/null; }
cleanup() {
  # A second Ctrl-C or SIGTERM (make forwards one to its recipe too) must not cut the
  # clean-up short: both are ignored from here on.
  trap '' INT TERM
  trap - EXIT
  echo
  echo "stopping the local stack..."
  [ -z "$prepare" ] || kill -TERM -- "-$prepare" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=""
    for pid in "${pids[@]}"; do alive "$pid" && left="$left $pid"; done
    [ -n "$left" ] && [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  # Whatever ignored SIGTERM for 10 s (a stopped process, say) is killed.
  for pid in $left; do
    kill -CONT -- "-$pid" 2>/dev/null || true
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$LOCAL/pids"
  if [ -n "$compose" ]; then
    docker compose -f localstack/docker-compose.yml down >/dev/null 2>&1 || true
  fi
  echo "stopped."
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# While starting: a process of the stack that exited takes the whole start-up with it,
# with its log on screen.
check_started() {
  local i
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      local status=0
      wait "${pids[$i]}" 2>/dev/null || status=$?
      echo >&2
      echo "${names[$i]} exited during start-up (status $status); its log (${logs[$i]}) ends:" >&2
      # Without the backtrace's frames, which would push the error itself out of view.
      grep -Ev '^ +([0-9]+: |at )' "${logs[$i]}" | tail -n 30 | sed 's/^/  | /' >&2
      exit 1
    fi
  done
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Free: nothing listens there, and a listener could bind it now (as the stack's own do,
# with SO_REUSEADDR). A client connection on loopback can hold the port as its own end,
# which no connect shows: CI once gave a worker a port held so for over 10 s.
port_free() {
  ! listening "$1" && python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
wait_for() { # what, seconds, command...: polls the command every 0.5 s
  local what=$1 seconds=$2; shift 2
  local tries=$((seconds * 2))
  for _ in $(seq 1 "$tries"); do
    check_started
    "$@" && return 0
    sleep 0.5
  done
  echo "$what did not come up in ${seconds}s; logs: $LOCAL/*.log" >&2
  return 1
}
PROCESSES=$((WORKERS + POOLS - 1)) # with two pools, one more worker for the second
held() { echo "port $1 is in use: stop what holds it (or set IHUB_DEV_*_PORT)" >&2; exit 1; }
for port in "$API_PORT" "$V2_PORT" "$DYNAMODB_PORT"; do
  port_free "$port" || held "$port"
done
taken=" $API_PORT $V2_PORT $DYNAMODB_PORT "
ports_for() { # variable, first port, whether it was set: PROCESSES ports into the array
  local -n into=$1
  local port=$2 i
  for i in $(seq 1 "$PROCESSES"); do
    if [ "$3" = set ]; then
      port_free "$port" && [[ "$taken" != *" $port "* ]] || held "$port"
    else
      while ! port_free "$port" || [[ "$taken" == *" $port "* ]]; do
        echo "port $port is in use: the next free one instead"
        port=$((port + 1))
        [ "$port" -lt $(($2 + 100)) ] || { echo "no free port in $2-$port" >&2; exit 1; }
      done
    fi
    into+=("$port")
    taken="$taken$port "
    port=$((port + 1))
  done
}
worker_ports=() metrics_ports=()
ports_for worker_ports "${WORKER_PORT:-50051}" "${WORKER_PORT:+set}"
ports_for metrics_ports "${METRICS_PORT:-9464}" "${METRICS_PORT:+set}"

# What only needs the network (pip, npm, the encoder's weights, the wine model's Python
# environment) runs beside the build, which needs the CPUs.
step "in the background: cargo-lambda, dynalite, ONNX Runtime, the demo models' inputs (log: $LOCAL/prepare.log)"
setsid bash -c '
  set -e
  command -v cargo-lambda >/dev/null 2>&1 || python3 -m pip install --quiet cargo-lambda ziglang
  make --no-print-directory -s dynalite model-inputs
' >"$LOCAL/prepare.log" 2>&1 &
prepare=$!

step "build: every binary in one cargo invocation (a fresh clone compiles for about four minutes)"
# One invocation, no -p: every package's dependencies are built once with the workspace's
# features, and `cargo lambda watch` below (also without -p) reuses them instead of
# compiling another variant.
cargo build --workspace --bins
[ "$WORKER_PROFILE" = debug ] || cargo build --release -p inferencehub-worker --bin inferencehub-worker

step "waiting for the background preparation"
if ! wait "$prepare"; then
  prepare=""
  echo "preparing failed; $LOCAL/prepare.log ends:" >&2
  tail -n 30 "$LOCAL/prepare.log" | sed 's/^/  | /' >&2
  exit 1
fi
prepare=""

step "demo models (models/)"
make --no-print-directory -s models

step "certificates and signing keys ($LOCAL/)"
[ -f "$LOCAL/certs/health.pem" ] || "$BIN/inferencehub-dev" gen-certs --out "$LOCAL/certs" >/dev/null
"$BIN/inferencehub-dev" mint-token --keys-dir "$LOCAL/jwt" --issuer "$ISSUER" --audience "$AUDIENCE" >/dev/null

step "DynamoDB on 127.0.0.1:$DYNAMODB_PORT"
export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DYNAMODB_PORT"
# The workers load ONNX Runtime from the pinned wheel's library (`make onnxruntime`).
export IHUB_WORKER_ONNXRUNTIME="${IHUB_WORKER_ONNXRUNTIME:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1}"
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local
if [ "$DYNAMODB_PORT" = 4566 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  compose=1
  IHUB_GATEWAY_RATE_LIMIT_TABLE="$TABLE" docker compose -f localstack/docker-compose.yml up -d
  echo "LocalStack started"
else
  start_group dynamodb "$LOCAL/dynamodb.log" localstack/dynalite.sh "$DYNAMODB_PORT"
  echo "no Docker engine: dynalite started (log: $LOCAL/dynamodb.log)"
fi
wait_for DynamoDB 240 listening "$DYNAMODB_PORT"
"$BIN/inferencehub-dev" create-table --endpoint "$AWS_ENDPOINT_URL_DYNAMODB" --table "$TABLE"

# With two pools, each serves a folder of links into the repository: the text models (a
# tokenizer.json) in the first, the rest in the second.
worker_dirs=()
if [ "$POOLS" = 2 ]; then
  rm -rf "$LOCAL/pools"
  mkdir -p "$LOCAL/pools/text" "$LOCAL/pools/tabular"
  for m in "$MODEL_DIR"/*/; do
    m="${m%/}"
    pool=tabular
    [ ! -f "$m/tokenizer.json" ] || pool=text
    ln -s "$(cd "$m" && pwd)" "$LOCAL/pools/$pool/$(basename "$m")"
  done
fi
worker_urls=() metrics_urls=() second_urls=()
for i in $(seq 0 $((PROCESSES - 1))); do
  n=$((i + 1))
  dir="$MODEL_DIR"
  if [ "$POOLS" = 2 ]; then
    dir="$LOCAL/pools/text"
    [ "$i" -lt "$WORKERS" ] || dir="$LOCAL/pools/tabular"
  fi
  log="$LOCAL/worker.log"
  [ "$PROCESSES" = 1 ] || log="$LOCAL/worker-$n.log"
  step "worker $n of $PROCESSES on 127.0.0.1:${worker_ports[$i]}, serving $dir (log: $log)"
  start_group "worker-$n" "$log" "$WORKER_BIN" serve \
    --listen "127.0.0.1:${worker_ports[$i]}" --metrics-listen "127.0.0.1:${metrics_ports[$i]}" \
    --model-dir "$dir" \
    --model-control "${IHUB_WORKER_MODEL_CONTROL:-poll}" --poll-interval "${IHUB_WORKER_POLL_INTERVAL:-2s}" \
    --tls-cert "$LOCAL/certs/server.pem" --tls-key "$LOCAL/certs/server.key" \
    --tls-client-ca "$LOCAL/certs/ca.pem" \
    --tls-client-names inferencehub-gateway --tls-health-names inferencehub-health
  if [ "$i" -lt "$WORKERS" ]; then
    worker_urls+=("https://127.0.0.1:${worker_ports[$i]}")
  else
    second_urls+=("\"https://127.0.0.1:${worker_ports[$i]}\"")
  fi
  metrics_urls+=("http://127.0.0.1:${metrics_ports[$i]}/metrics")
done
WORKER_ADDRS="$(IFS=,; echo "${worker_urls[*]}")"
METRICS_URLS="$(IFS=,; echo "${metrics_urls[*]}")"

step "functions: cargo lambda watch on 127.0.0.1:$API_PORT (log: $LOCAL/lambda.log)"
export IHUB_GATEWAY_JWT_ISSUER="$ISSUER" IHUB_GATEWAY_JWT_AUDIENCE="$AUDIENCE"
export IHUB_GATEWAY_JWKS_FILE="$PWD/$LOCAL/jwt/dev-jwks.json"
export IHUB_GATEWAY_WORKER_ADDRS="$WORKER_ADDRS"
if [ "$POOLS" = 2 ]; then
  # The second pool presents the same dev certificates; in a deployment each pool may
  # have its own (tls_cert, tls_key, tls_ca or tls_secret_id in the pool's entry).
  export IHUB_GATEWAY_WORKER_POOLS="[{\"name\": \"tabular\", \"addrs\": [$(IFS=,; echo "${second_urls[*]}")]}]"
fi
export IHUB_GATEWAY_WORKER_TLS_CA="$PWD/$LOCAL/certs/ca.pem"
export IHUB_GATEWAY_WORKER_TLS_CERT="$PWD/$LOCAL/certs/client.pem"
export IHUB_GATEWAY_WORKER_TLS_KEY="$PWD/$LOCAL/certs/client.key"
export IHUB_GATEWAY_RATE_LIMIT_TABLE="$TABLE"
# The worker polls models/ every 2 s; the gateway reads its catalogue again after 5 s, so a
# folder dropped in answers within seconds.
export IHUB_GATEWAY_CATALOG_TTL="${IHUB_GATEWAY_CATALOG_TTL:-5s}"
# Up to IHUB_DEV_CONCURRENCY instances per function, as Lambda scales out under load.
# cargo lambda rebuilds and restarts the functions when the code changes; measurements
# (chaos, soak) set IHUB_DEV_NO_RELOAD=1 so an edit elsewhere cannot disturb them.
watch_flags=(--concurrency "${IHUB_DEV_CONCURRENCY:-4}")
[ -z "${IHUB_DEV_NO_RELOAD:-}" ] || watch_flags+=(--ignore-changes)
start_group functions "$LOCAL/lambda.log" \
  cargo-lambda lambda watch --color never --invoke-address 127.0.0.1 --invoke-port "$API_PORT" \
  "${watch_flags[@]}"

# The Open Inference Protocol's binary tensors are not UTF-8, which cargo lambda's HTTP
# emulator cannot carry (API Gateway base64-encodes them): the same three handlers also
# serve on a plain HTTP port, where /v2/... takes binary bodies.
step "the same functions over plain HTTP on 127.0.0.1:$V2_PORT for /v2 (log: $LOCAL/gateway.log)"
start_group gateway "$LOCAL/gateway.log" "$BIN/inferencehub-dev" gateway --listen "127.0.0.1:$V2_PORT"

BASE="http://127.0.0.1:$API_PORT/lambda-url"
step "waiting for the workers to load their models and $BASE/health/healthz to answer"
for port in "${metrics_ports[@]}"; do
  wait_for "the worker on metrics port $port" 600 curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"
done
wait_for "the health function" 600 curl -sf -o /dev/null -m 30 "$BASE/health/healthz"
wait_for "the plain HTTP gateway" 120 listening "$V2_PORT"

TOKEN="$("$BIN/inferencehub-dev" mint-token --keys-dir "$LOCAL/jwt" --issuer "$ISSUER" --audience "$AUDIENCE" --sub dev-user --scope predict --ttl 1h)"
# Written aside and renamed: whoever waits for dev.env to appear reads it whole.
cat >"$LOCAL/dev.env.tmp" <<ENV
IHUB_PREDICT_URL=$BASE/predict/v1/predict
IHUB_MODELS_URL=$BASE/models/v1/models
IHUB_HEALTH_URL=$BASE/health/healthz
IHUB_V2_URL=http://127.0.0.1:$V2_PORT
IHUB_OPENAI_BASE_URL=$BASE/predict/v1
IHUB_OPENAPI_URL=$BASE/models/openapi.json
IHUB_DOCS_URL=http://127.0.0.1:$V2_PORT/docs
IHUB_TOKEN=$TOKEN
IHUB_JWT_PRIVATE_KEY=$PWD/$LOCAL/jwt/dev-jwt.pem
IHUB_GATEWAY_JWKS_FILE=$PWD/$LOCAL/jwt/dev-jwks.json
IHUB_GATEWAY_JWT_ISSUER=$ISSUER
IHUB_GATEWAY_JWT_AUDIENCE=$AUDIENCE
IHUB_GATEWAY_WORKER_ADDRS=$WORKER_ADDRS
IHUB_GATEWAY_WORKER_POOLS='${IHUB_GATEWAY_WORKER_POOLS:-}'
IHUB_WORKER_METRICS_URL=${metrics_urls[0]}
IHUB_WORKER_METRICS_URLS=$METRICS_URLS
IHUB_WORKER_PORTS='${worker_ports[*]}'
IHUB_WORKER_METRICS_PORTS='${metrics_ports[*]}'
IHUB_WORKERS=$PROCESSES
IHUB_POOLS=$POOLS
IHUB_PIDS_DIR=$PWD/$LOCAL/pids
IHUB_CERTS_DIR=$PWD/$LOCAL/certs
AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB
IHUB_WORKER_ONNXRUNTIME=$IHUB_WORKER_ONNXRUNTIME
IHUB_GATEWAY_RATE_LIMIT_TABLE=$TABLE
ENV
mv "$LOCAL/dev.env.tmp" "$LOCAL/dev.env"
step "up"

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

  curl -s $BASE/predict/v1/predict \\
    -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model_name":"columns","tensors":{"age":[41],"income":[30000],"city":["oslo"]}}'

  curl -s $BASE/predict/v1/embeddings \\
    -H "Authorization: Bearer $TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"minilm","input":["How do I reset my password?","Semantic search finds documents by meaning."]}'

  curl -s $BASE/models/v1/models -H "Authorization: Bearer $TOKEN"
  curl -s $BASE/health/healthz

OpenAI's client (embeddings): OpenAI(base_url="$BASE/predict/v1", api_key=<the token>)

Open Inference Protocol v2 (tritonclient[http] works against it, binary or JSON):

  curl -s http://127.0.0.1:$V2_PORT/v2/models/iris/infer \\
    -H "Authorization: Bearer $TOKEN" \\
    -d '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'

API page (paste the token, try any route): http://127.0.0.1:$V2_PORT/docs
OpenAPI document: http://127.0.0.1:$V2_PORT/openapi.json

A new token: $BIN/inferencehub-dev mint-token --keys-dir $LOCAL/jwt --sub alice --scope predict --ttl 1h
Press Ctrl-C to stop everything.
MSG

# Until every process of the stack has stopped, or a signal stops this script. One that
# stops on its own (a worker killed by the chaos test, say) leaves the others running.
wait "${pids[@]}" 2>/dev/null || true
