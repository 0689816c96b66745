#!/usr/bin/env bash
# `make chaos`: faults injected into the real local stack under steady load, each scenario
# measured with `inferencehub-bench load` (HTTP through cargo lambda, 2 worker replicas):
#   baseline, a replica killed (SIGKILL), a replica frozen (SIGSTOP), a rolling restart
#   (SIGTERM one, start a new one, then the other), every replica down then one back,
#   DynamoDB killed then back (table recreated), the functions frozen past the idle
#   rebuild time, a model swapped in the polled repository (a new version, a broken one,
#   the new one removed).
# Prints a table (scenario, requests, failed, p99, what it shows); exits non-zero when a
# scenario misses its goal. All traffic stays on loopback; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${CHAOS_RATE:-50}"          # requests per second, mixed over the demo models
SECS="${CHAOS_SECS:-15}"          # load per scenario
ONLY="${CHAOS_ONLY:-}"            # scenarios to run (space-separated); the baseline always runs
FAULT_AT=4                        # seconds into the load when the fault comes
GRACE_MS=5000                     # failures allowed only this long after a freeze
LOCAL=.local
OUT="$LOCAL/chaos"
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
extra=() # process groups this script starts itself (replacement workers, DynamoDB)
stack_before_down() {
  # The group, or the process itself when it has not made its group yet (setsid races the
  # signal when a scenario fails right after starting it).
  for pid in "${extra[@]}"; do
    kill -CONT -- "-$pid" 2>/dev/null || kill -CONT "$pid" 2>/dev/null || true
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  if [ -d "${IHUB_PIDS_DIR:-/nonexistent}" ]; then
    for f in "$IHUB_PIDS_DIR"/*.pid; do kill -CONT -- "-$(cat "$f")" 2>/dev/null || true; done
    [ ! -f "$IHUB_PIDS_DIR/functions.pid" ] || pkill -CONT -P "$(cat "$IHUB_PIDS_DIR/functions.pid")" 2>/dev/null || true
  fi
}
# The workers poll a repository of their own: the demo models linked, iris as version 1 of
# a versioned folder (the model-swap scenario adds and removes versions beside it).
MODELS="$OUT/models"
mkdir -p "$MODELS/iris"
for m in models/*/; do
  m="$(basename "$m")"
  [ "$m" = iris ] || ln -s "$PWD/models/$m" "$MODELS/$m"
done
ln -s "$PWD/models/iris" "$MODELS/iris/1"
# Short idle rebuild so the frozen-Lambda scenario is quick; a per-attempt timeout of 1 s.
stack_up "$OUT" WORKERS=2 IHUB_GATEWAY_WORKER_IDLE_REBUILD=3s IHUB_GATEWAY_WORKER_ATTEMPT_TIMEOUT=1s \
  IHUB_DEV_MODEL_DIR="$MODELS" IHUB_WORKER_POLL_INTERVAL=1s

group() { cat "$IHUB_PIDS_DIR/$1.pid"; }
signal() { kill "-$1" -- "-$(group "$2")" 2>/dev/null || true; } # SIG, name
read -r -a worker_ports <<<"$IHUB_WORKER_PORTS"
read -r -a metrics_ports <<<"$IHUB_WORKER_METRICS_PORTS"
metrics_port() { echo "${metrics_ports[$1 - 1]}"; }
serving() { curl -sf -m 2 "http://127.0.0.1:$(metrics_port "$1")/healthz" >/dev/null; }
wait_serving() { for _ in $(seq 1 300); do serving "$1" && return 0; sleep 0.2; done; echo "worker $1 never served" >&2; return 1; }
wait_gone() { for _ in $(seq 1 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done; return 1; }
start_worker() { # N: a new replica on worker N's ports, in its own process group
  local n=$1
  setsid "$BIN/inferencehub-worker" serve \
    --listen "127.0.0.1:${worker_ports[n - 1]}" --metrics-listen "127.0.0.1:$(metrics_port "$n")" \
    --model-dir "$MODELS" --model-control poll --poll-interval 1s \
    --tls-cert "$IHUB_CERTS_DIR/server.pem" --tls-key "$IHUB_CERTS_DIR/server.key" \
    --tls-client-ca "$IHUB_CERTS_DIR/ca.pem" \
    --tls-client-names inferencehub-gateway --tls-health-names inferencehub-health \
    >>"$OUT/worker-$n.restarted.log" 2>&1 &
  extra+=($!)
  disown $!
  echo $! >"$IHUB_PIDS_DIR/worker-$n.pid"
}
load() { # name, seconds: the load in the background; sets LOAD_PID
  "$BIN/inferencehub-bench" load --rate "$RATE" --concurrency 64 --duration "${2}s" \
    --timeout 15s --quiet --json --csv "$OUT/$1.csv" >"$OUT/$1.json" 2>"$OUT/$1.err" &
  LOAD_PID=$!
}

rows=()
failures=0
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
report() { # name, goal-check (python expression over the stats), what it shows
  local stats
  stats="$(scripts/load_stats.py "$OUT/$1.csv" $((FAULT_AT * 1000)) "$GRACE_MS" ${WINDOW:-})"
  echo "$stats" >"$OUT/$1.stats.json"
  local verdict
  verdict="$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("met" if eval(sys.argv[2]) else "MISSED")' "$stats" "$2")"
  # A miss names the figures it was judged on, so a CI log alone tells which part failed.
  [ "$verdict" = met ] || { failures=$((failures + 1)); echo "$1 missed its goal ($2): $stats" >&2; }
  rows+=("$(STATS="$stats" NAME="$1" WHAT="$3" VERDICT="$verdict" python3 - <<'PY'
import json, os
s = json.loads(os.environ["STATS"])
st = ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items())) or "-"
print(f"| {os.environ['NAME']} | {s['sent']} | {s['failed']} ({st}) | {s['failed_late']} "
    f"| {s['p99_before']} / {s['p99_after']} | {s['max']} / {s['max_after']} | {os.environ['WHAT']} | {os.environ['VERDICT']} |")
PY
)")
  echo "${rows[-1]}"
}

echo "== chaos: $RATE req/s for ${SECS}s per scenario, fault at ${FAULT_AT}s, 2 replicas"

# Warm-up (cold starts of the functions), not reported.
load warmup 5; wait "$LOAD_PID"

# 1. Baseline.
load baseline "$SECS"; wait "$LOAD_PID"
report baseline 's["failed"] == 0' "no fault: the reference p99"
BASE_P99="$(python3 -c 'import json; print(json.load(open(".local/chaos/baseline.stats.json"))["p99"])')"

# 2. One replica killed with SIGKILL, then started again.
if want sigkill; then
  load sigkill "$SECS"; sleep "$FAULT_AT"
  signal KILL worker-2
  sleep 4; start_worker 2; wait "$LOAD_PID"
  report sigkill 's["failed"] == 0' "a killed replica costs no request (retried on the other)"
  wait_serving 2
fi

# 3. One replica frozen with SIGSTOP for the rest of the run, then continued. Every
# function instance loses one attempt timeout to it; with the emulator's fixed instance
# count (Lambda would scale out) the requests queued meanwhile drain for a few seconds on
# the one replica left, so this run is 10 s longer and its last 5 s start 16 s after the
# freeze.
if want sigstop; then
  load sigstop "$((SECS + 10))"; sleep "$FAULT_AT"
  signal STOP worker-1
  wait "$LOAD_PID"; signal CONT worker-1
  # Skipped: after the grace no answer takes an attempt timeout (1 s), which any call sent
  # to the frozen replica would. The one replica left then carries both replicas' encoder
  # calls on the same two cores, so its p99 may rise (CI measured 97.7 ms against a
  # baseline of 49.8 ms): within 3x of the host's p99 as it is — the larger of the
  # baseline's and this run's own before the freeze (a CI run measured 44.8 ms before the
  # freeze against the baseline's 32.5–36.5 ms, then 122.8 ms at the end, nothing failed).
  report sigstop "s['failed_late'] == 0 and s['max_after'] < 1000 and s['p99_after'] <= 3 * max($BASE_P99, s['p99_before'], 1)" \
    "a frozen replica is skipped within seconds: after that no answer waits 1 s; p99 within 3x of the run's before the fault or the baseline's"
  wait_serving 1
fi

# 4. Rolling restart: SIGTERM one, start its successor, then the other.
if want rolling; then
  load rolling "$((SECS + 10))"; sleep "$FAULT_AT"
  for n in 1 2; do
    old="$(group "worker-$n")"
    kill -TERM -- "-$old" 2>/dev/null || true
    wait_gone "$old" || true
    start_worker "$n"; wait_serving "$n"
  done
  wait "$LOAD_PID"
  report rolling 's["failed"] == 0' "a rolling restart costs no request"
fi

# 5. Every replica down, then one back.
if want alldown; then
  load alldown "$SECS"; sleep "$FAULT_AT"
  signal KILL worker-1; signal KILL worker-2
  sleep 4; start_worker 1; wait_serving 1
  wait "$LOAD_PID"
  python3 - "$OUT/alldown.csv" <<'PY' >"$OUT/alldown.check"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bad = [r for r in rows if r["status"] not in ("200", "503")]
slow = [r for r in rows if float(r["latency_ms"]) > 12000]
last = rows[-20:]
print("ok" if not bad and not slow and all(r["status"] == "200" for r in last) else f"bad={len(bad)} slow={len(slow)}")
PY
  report alldown "s['max'] < 12000 and set(s['statuses']) <= {'503'} and open('$OUT/alldown.check').read().strip() == 'ok'" \
    "all down: 503 (Retry-After) within the deadline, no hang; recovers without restarting the functions"
  start_worker 2; wait_serving 2
fi

# 6. DynamoDB killed mid-load, then back with the table recreated.
if want dynamodb; then
  load dynamodb "$SECS"; sleep "$FAULT_AT"
  signal KILL dynamodb
  sleep 4
  port="${AWS_ENDPOINT_URL_DYNAMODB##*:}"
  setsid localstack/dynalite.sh "$port" >"$OUT/dynamodb.log" 2>&1 &
  extra+=($!)
  disown $!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
  "$BIN/inferencehub-dev" create-table --endpoint "$AWS_ENDPOINT_URL_DYNAMODB" --table "$IHUB_GATEWAY_RATE_LIMIT_TABLE" >/dev/null
  wait "$LOAD_PID"
  python3 - "$OUT/dynamodb.csv" <<'PY' >"$OUT/dynamodb.check"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("ok" if all(r["status"] == "200" for r in rows[-20:]) else "not recovered")
PY
  report dynamodb "set(s['statuses']) <= {'503'} and open('$OUT/dynamodb.check').read().strip() == 'ok'" \
    "DynamoDB gone: 503 (fail closed), never 500; back without restarting the functions"
fi

# 7. The functions frozen longer than the idle rebuild time, then continued: cargo lambda
# and the function processes it runs (its children, each in a session of its own).
if want frozen-lambda; then
  functions_too() { signal "$1" functions; pkill "-$1" -P "$(group functions)" 2>/dev/null || true; }
  functions_too STOP
  sleep 5
  functions_too CONT
  load frozen-lambda 2
  wait "$LOAD_PID"
  report frozen-lambda 's["failed"] == 0' "a Lambda frozen past the idle rebuild answers its first requests"
fi

# 8. A model swapped in the polled repository under load: iris version 2 added (both
# replicas load it beside version 1, then serve it and unload 1), a broken version 3 added
# (listed UNAVAILABLE; 2 keeps serving), version 2 removed (1 loads again and serves).
if want model-swap; then
  holds() { # replica, version: whether it holds iris in that version
    curl -sf -m 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" |
      grep -Eq "^inferencehub_worker_model_resident_bytes\{model=\"iris\",version=\"$2\"\} [1-9]"
  }
  only() { # version: every replica serves iris in it and in no other
    for n in 1 2; do
      holds "$n" "$1" || return 1
      for v in 1 2 3; do [ "$v" = "$1" ] || ! holds "$n" "$v" || return 1; done
    done
  }
  wait_only() { for _ in $(seq 1 300); do only "$1" && return 0; sleep 0.1; done; echo "iris $1 never served alone" >&2; return 1; }
  now_ms() { date +%s%3N; }
  t0="$(now_ms)"
  load model-swap "$((SECS + 10))"; sleep "$FAULT_AT"
  swap_from="$(now_ms)"
  mkdir "$MODELS/.iris-2"; cp -L models/iris/* "$MODELS/.iris-2/"; mv "$MODELS/.iris-2" "$MODELS/iris/2"
  wait_only 2
  ready_ms=$(($(now_ms) - swap_from))
  mkdir "$MODELS/.iris-3"; echo '{"not": "a model"}' >"$MODELS/.iris-3/tabular.json"
  mv "$MODELS/.iris-3" "$MODELS/iris/3"
  sleep 3; only 2 || { echo "version 2 stopped serving after a broken version 3" >&2; }
  rm -rf "$MODELS/iris/2"
  wait_only 1
  swap_to="$(now_ms)"
  wait "$LOAD_PID"
  WINDOW="$((swap_from - t0)) $((swap_to - t0))" report model-swap \
    's["failed"] == 0' "iris v2 added (both replicas serve it alone after ${ready_ms} ms), broken v3 added, v2 removed: no failed request"
  python3 -c 'import json; s=json.load(open(".local/chaos/model-swap.stats.json")); print("model-swap: p99 %s ms before the swap, %s ms during it (%d requests)" % (s["p99_before"], s["p99_window"], s["window_requests"]))' | tee "$OUT/model-swap.p99"
  # The replicas restarted by the scenarios above log to $OUT/worker-N.restarted.log.
  grep -h "a version failed to load" .local/worker-*.log "$OUT"/worker-*.restarted.log 2>/dev/null |
    head -1 | grep -q "iris" ||
    echo "note: no replica logged version 3's failure" >&2
  # Version 3 stays listed broken; remove it so the other scenarios' workers start clean.
  rm -rf "$MODELS/iris/3"
fi

echo
echo "| scenario | requests | failed (statuses) | failed 5 s after the fault | p99 ms before the fault / last 5 s | max ms / 5 s after the fault | what it shows | goal |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "chaos: $((${#rows[@]} - failures)) of ${#rows[@]} scenarios met their goal (details: $OUT/)"
echo "load to READY on replica 1 (load and warm-up, after the poll that found it):"
grep -h "model loaded" .local/worker-1.log | sed -E 's/.*model=([^ ]+) version=([^ ]+).*load_ms=([0-9]+).*/  \1 version \2: \3 ms/' | sort -u
[ "$failures" = 0 ]
