#!/usr/bin/env bash
# `make cost-report`: the cost of a million predictions per demo model, from figures
# measured here and the price file infra/prices.json:
#   - the predict function's duration per request (its own EMF `Latency`, which is what
#     Lambda bills), per model, 20 requests/s for 15 s through the local stack;
#   - the worker's predictions/s per instance: over mTLS gRPC with 32 callers (the release
#     load generator) on this machine's CPU for every model, and for `sentiment` on a GPU the H200 figure of
#     docs/bench-gpu-h200.md (64 callers);
#   - one DynamoDB write per request (the rate-limit counter), the function's configured
#     memory from template.yaml.
# Writes docs/cost-measured.json, docs/cost-report.md and docs/cost-report.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.local/cost
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
# The load generator optimised too: a debug build of it (rustls, HTTP/2 and tonic
# unoptimised) saturates this machine's two cores with 32 callers at about a quarter of
# what the worker serves (iris: 6.3k vs 25k predictions/s, measured), so it would price the
# client, not the worker.
cargo build --release -q -p inferencehub-bench --bin inferencehub-bench
LOAD="${BIN%/debug}/release/inferencehub-bench"
# The worker as it ships: an optimised build (a debug one would bill the function for a
# slow encoder).
stack_up "$OUT" WORKERS=1 IHUB_DEV_WORKER_PROFILE=release

cut -f1 tools/data/sentiment.tsv | tail -n +2 >"$OUT/sentiment.inputs"
cut -d, -f1-4 tools/data/iris.csv | tail -n +2 >"$OUT/iris.inputs"
echo "13.32,3.24,2.38,21.5,92,1.93,0.76,0.45,1.25,8.42,0.55,1.62,650" >"$OUT/wine.inputs"

for m in sentiment iris wine; do
  echo "== $m: the predict function's duration (20 req/s, 15 s), then the worker's throughput (32 callers, 10 s)"
  start=$(wc -l <.local/lambda.log)
  "$LOAD" load --models "$m" --rate 20 --duration 15s --quiet --json >"$OUT/$m.load.json"
  sleep 1
  tail -n +"$((start + 1))" .local/lambda.log >"$OUT/$m.lambda.log"
  "$LOAD" load --worker-addr "${IHUB_GATEWAY_WORKER_ADDRS%%,*}" \
    --tls-ca "$IHUB_CERTS_DIR/ca.pem" --tls-cert "$IHUB_CERTS_DIR/client.pem" --tls-key "$IHUB_CERTS_DIR/client.key" \
    --models "$m" --inputs "$OUT/$m.inputs" --rate 0 --concurrency 32 --duration 10s --quiet --json >"$OUT/$m.worker.json"
done

python3 - "$OUT" <<'PY'
import json, math, re, sys
out = sys.argv[1]
# The predict function has no MemorySize of its own: the Globals' applies.
memory = int(re.search(r"Globals:.*?MemorySize: (\d+)", open("template.yaml").read(), re.S).group(1))
gpu = re.search(r"^\| 64 \| (\d+) \|", open("docs/bench-gpu-h200.md").read(), re.M)
models = []
for m in ("sentiment", "iris", "wine"):
    lat = []
    for line in open(f"{out}/{m}.lambda.log"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("Function") == "predict" and e.get("Model") == m and e.get("Status") == 200:
            lat.append(e["Latency"])
    if not lat:
        sys.exit(f"cost-report: no 200 answer from the predict function for {m} in {out}/{m}.lambda.log (see .local/lambda.log)")
    worker = json.load(open(f"{out}/{m}.worker.json"))
    load = json.load(open(f"{out}/{m}.load.json"))
    if m == "sentiment" and gpu:
        per_s, source = float(gpu.group(1)), "H200, docs/bench-gpu-h200.md"
    else:
        per_s, source = worker["rps"], "this machine's 2 CPU cores"
    models.append({
        "model": m,
        "requests_measured": len(lat),
        "load_failed": load["failed"],
        "lambda_ms_mean": sum(lat) / len(lat),
        # Lambda bills each invocation's duration rounded up to the millisecond.
        "lambda_billed_ms": math.ceil(sum(math.ceil(x) for x in lat) / len(lat)),
        "lambda_memory_mb": memory,
        "dynamodb_writes_per_request": 1,
        "bytes_per_request": 2048,
        "worker_predictions_per_s": per_s,
        "worker_source": source,
        "worker_cpu_predictions_per_s": worker["rps"],
    })
json.dump({"min_workers": 1, "models": models, "assumed": {
    "bytes_per_request": "2 KiB through the load balancer per request, both ways (not measured)",
    "sentiment_gpu": "the H200 figure stands for the priced g5.xlarge's A10G, which is slower",
    "lambda": "duration measured on this x86 machine in a debug build under cargo lambda; arm64 release builds in Lambda differ",
}}, open("docs/cost-measured.json", "w"), indent=2)
PY
python3 tools/python/cost_report.py docs/cost-measured.json infra/prices.json docs/cost-report.md docs/cost-report.svg
