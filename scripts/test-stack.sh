#!/usr/bin/env bash
# The stack test (part of `make test`): runs `make dev`'s script unattended, calls the
# printed endpoints with the minted token, checks the answers, stops the stack with
# SIGTERM and checks that nothing it started is left listening.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .local
rm -f .local/dev.env
log=.local/test-stack.log

scripts/dev.sh >"$log" 2>&1 &
dev=$!
# Stopped the way process managers and `timeout` do, twice in a row (make forwards a
# signal to its recipe too): the clean-up must still finish.
stop() {
  kill -TERM "$dev" 2>/dev/null || true
  sleep 0.2
  kill -TERM "$dev" 2>/dev/null || true
  wait "$dev" 2>/dev/null || true
}
trap stop EXIT

passed=0
failed=0
check() { # name, command...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

for _ in $(seq 1 900); do
  [ -f .local/dev.env ] && break
  if ! kill -0 "$dev" 2>/dev/null; then echo "make dev exited early:"; tail -40 "$log"; exit 1; fi
  sleep 1
done
[ -f .local/dev.env ] || { echo "make dev did not come up in 15 minutes:"; tail -40 "$log"; exit 1; }
set -a; . .local/dev.env; set +a

field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
predict() { curl -s -m 60 "$IHUB_PREDICT_URL" -H "Authorization: Bearer $IHUB_TOKEN" -H 'Content-Type: application/json' -d "$1"; }

check "sentiment via the printed curl" \
  test "$(predict '{"model_name":"sentiment","prompt":"The support team fixed it in minutes, thank you!"}' | field label)" = positive
check "iris via the printed curl" \
  test "$(predict '{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}' | field label)" = setosa
check "wine (scikit-learn forest, ONNX) via the printed curl" \
  test "$(predict '{"model_name":"wine","features":[13.32,3.24,2.38,21.5,92,1.93,0.76,0.45,1.25,8.42,0.55,1.62,650]}' | field label)" = cultivar_3
check "columns (named FP32 and BYTES inputs) via the printed curl" \
  test "$(predict '{"model_name":"columns","tensors":{"age":[41],"income":[30000],"city":["oslo"]}}' | field label)" = yes
# A model folder dropped into models/ is served within seconds (the worker polls the
# repository; the gateway's catalogue lives 5 s locally), and leaves when removed.
dropped=models/dropped-in-by-test
rm -rf "$dropped"; ln -s "$PWD/gpu-worker/tests/fixtures/onnx/xgboost-binary" "$dropped"
dropped_row="$(python3 -c 'import json; print(json.dumps(json.load(open("gpu-worker/tests/fixtures/onnx/xgboost-binary/expected.json"))["inputs"][0]))')"
served_within() {
  for _ in $(seq 1 60); do
    predict "{\"model_name\":\"dropped-in-by-test\",\"features\":$dropped_row}" | grep -q '"label"' && return 0
    sleep 0.5
  done
  return 1
}
check "a model folder dropped into models/ answers within 30 s (poll)" served_within
rm -f "$dropped"
check "models lists the demo models" \
  bash -c "curl -s -m 60 '$IHUB_MODELS_URL' -H 'Authorization: Bearer $IHUB_TOKEN' | grep -q '\"name\":\"wine\"'"
check "no token gets 401" \
  test "$(curl -s -o /dev/null -w '%{http_code}' -m 60 -X POST "$IHUB_PREDICT_URL" -d '{}')" = 401
check "health answers 200" \
  test "$(curl -s -o /dev/null -w '%{http_code}' -m 60 "$IHUB_HEALTH_URL")" = 200

check "Open Inference Protocol: tritonclient[http] in binary and JSON modes on \$IHUB_V2_URL" \
  .cache/oip/bin/python tools/python/oip_client_test.py
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OTHER_TOKEN="$("$TARGET/debug/inferencehub-dev" mint-token --keys-dir .local/jwt --issuer "$IHUB_GATEWAY_JWT_ISSUER" --audience "$IHUB_GATEWAY_JWT_AUDIENCE" --sub other --scope 'predict model:iris' --ttl 10m)"
check "embeddings: OpenAI's python client on \$IHUB_OPENAI_BASE_URL, against a numpy reference" \
  env IHUB_OTHER_MODEL_TOKEN="$OTHER_TOKEN" PYTHONPATH=tools/python .cache/oip/bin/python tools/python/openai_client_test.py
check "embeddings via the printed curl" \
  bash -c "curl -s -m 60 '$IHUB_OPENAI_BASE_URL/embeddings' -H 'Authorization: Bearer $IHUB_TOKEN' -H 'Content-Type: application/json' -d '{\"model\":\"minilm\",\"input\":\"hello\"}' | grep -q '\"object\":\"embedding\"'"
check "OIP infer over cargo lambda (JSON)" \
  bash -c "curl -s -m 60 '${IHUB_PREDICT_URL%/v1/predict}/v2/models/iris/infer' -H 'Authorization: Bearer $IHUB_TOKEN' -H 'Content-Type: application/json' -d '{\"inputs\":[{\"name\":\"features\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[5.1,3.5,1.4,0.2]}]}' | grep -q setosa"

check "the /docs page in headless Chromium: every operation, a try-it prediction, nothing from elsewhere" \
  node tools/browser/docs_test.mjs "${IHUB_DOCS_SCREENSHOT:-.local/docs-page.png}"

check "logs written to files carry no terminal colour codes" \
  bash -c "! grep -l \$'\\x1b\\[' .local/*.log"
groups="$(cat .local/pids/*.pid 2>/dev/null | tr '\n' ' ')"
check "every process group it started is listed in .local/pids" test -n "$groups"

stop
trap - EXIT
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
all_free() { local p; for p in "$@"; do port_free "$p" || return 1; done; }
# The stack's ports, its workers' as the last dev.env read lists them (the next free ones
# from 50051 and 9464).
ports_of_stack() { echo "9000 9001 4566 $IHUB_WORKER_PORTS $IHUB_WORKER_METRICS_PORTS"; }
stack_ports="$(ports_of_stack)"
sleep 1
check "SIGTERM stops every listener it started ($stack_ports)" all_free $stack_ports
alive=""
for g in $groups; do kill -0 -- "-$g" 2>/dev/null && alive="$alive $g"; done
check "SIGTERM leaves no process of its groups behind" test -z "$alive"

# A process of the stack that exits during start-up stops it at once, with its error: a
# worker whose model folder holds a broken model, under `--model-control none` (polling,
# the default here, lists it UNAVAILABLE and serves the rest instead).
bad=$(mktemp -d)
mkdir -p "$bad/broken"
echo "not an ONNX graph" >"$bad/broken/model.onnx"
started=$SECONDS
set +e
IHUB_WORKER_MODEL_CONTROL=none IHUB_DEV_MODEL_DIR="$bad" timeout 300 scripts/dev.sh >.local/test-stack-broken.log 2>&1
status=$?
set -e
took=$((SECONDS - started))
check "a worker refusing its model folder stops make dev at once (${took}s), showing why" \
  bash -c "[ $status = 1 ] && grep -q 'worker-1 exited during start-up' .local/test-stack-broken.log \
    && grep -q 'loading model .*broken' .local/test-stack-broken.log && [ $took -lt 120 ]"
rm -rf "$bad"
check "and leaves nothing listening" all_free $stack_ports

# Two worker pools (`make dev POOLS=2`): the text models on the first, the others on a
# second worker; the gateway sends each model's calls to its pool only.
rm -f .local/dev.env
POOLS=2 scripts/dev.sh >.local/test-stack-pools.log 2>&1 &
dev=$!
for _ in $(seq 1 600); do
  [ -f .local/dev.env ] && break
  kill -0 "$dev" 2>/dev/null || break
  sleep 1
done
if [ -f .local/dev.env ]; then
  set -a; . .local/dev.env; set +a
  read -r text_metrics tabular_metrics <<<"$IHUB_WORKER_METRICS_PORTS"
  answered() { # metrics port, model: the calls that worker answered for it
    curl -s -m 10 "http://127.0.0.1:$1/metrics" |
      awk -v m="model=\"$2\"" '/^inferencehub_worker_requests_total\{/ && index($0, m) {s += $NF} END {print s + 0}'
  }
  sentiment=$(predict '{"model_name":"sentiment","prompt":"Fast and friendly support."}' | field label)
  iris=$(predict '{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}' | field label)
  check "POOLS=2: sentiment ($sentiment) answered by the text pool only, iris ($iris) by the other only" \
    bash -c "[ $(answered "$text_metrics" sentiment) -ge 1 ] && [ $(answered "$tabular_metrics" sentiment) = 0 ] \
      && [ $(answered "$tabular_metrics" iris) -ge 1 ] && [ $(answered "$text_metrics" iris) = 0 ]"
  stack_ports="$(ports_of_stack)"
else
  check "POOLS=2 brings the stack up (log: .local/test-stack-pools.log)" false
  echo "make dev POOLS=2 did not come up; .local/test-stack-pools.log ends:"
  tail -40 .local/test-stack-pools.log | sed 's/^/  | /'
fi
stop
check "and POOLS=2 leaves nothing listening ($stack_ports)" all_free $stack_ports

echo "stack: $passed passed, $failed failed"
[ "$failed" = 0 ]
