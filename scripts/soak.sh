#!/usr/bin/env bash
# `make soak MINUTES=10`: steady mixed load through the whole local stack (2 worker
# replicas, cargo lambda) for MINUTES after a warm-up, then a report: requests, errors,
# p50/p99, and the resident memory and open descriptors of the workers and the function
# processes at the start and the end. Goal: 0 errors, memory and descriptors within 10 %.
# Exits non-zero when the goal is missed. Loopback only; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES="${1:-${MINUTES:-10}}"
RATE="${SOAK_RATE:-40}"
WARMUP="${SOAK_WARMUP_SECS:-30}"
LOCAL=.local
OUT="$LOCAL/soak"
rm -rf "$OUT"
mkdir -p "$OUT"
. scripts/lib/stack.sh
stack_up "$OUT" WORKERS=2

# Resident memory (kB) and open descriptors, summed per kind of process in the stack's
# process groups: the workers, and the function binaries cargo lambda runs (each in a
# session of its own, as its children).
sample() { # label -> one JSON line
  python3 - "$1" "$IHUB_PIDS_DIR" <<'PY'
import json, os, sys
label, pids_dir = sys.argv[1], sys.argv[2]
groups = {int(open(os.path.join(pids_dir, f)).read()) for f in os.listdir(pids_dir)}
kinds = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        if os.getpgid(int(pid)) not in groups and ppid not in groups:
            continue
        name = open(f"/proc/{pid}/comm").read().strip()
        if name not in ("inferencehub-wo", "predict", "models", "health"):
            continue
        kind = "worker" if name.startswith("inferencehub") else name
        rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        continue
    k = kinds.setdefault(kind, {"processes": 0, "rss_kb": 0, "fds": 0})
    k["processes"] += 1
    k["rss_kb"] += rss
    k["fds"] += fds
print(json.dumps({"label": label, "kinds": kinds}))
PY
}

echo "== warm-up: ${WARMUP}s at $RATE req/s"
"$BIN/inferencehub-bench" load --rate "$RATE" --concurrency 64 --duration "${WARMUP}s" --quiet --json >"$OUT/warmup.json"
sample start >"$OUT/samples.jsonl"
echo "== soak: ${MINUTES} min at $RATE req/s (a progress line per second in $OUT/load.progress)"
"$BIN/inferencehub-bench" load --rate "$RATE" --concurrency 64 --duration "${MINUTES}m" \
  --json --csv "$OUT/load.csv" >"$OUT/load.json" 2>"$OUT/load.progress" &
load=$!
while kill -0 "$load" 2>/dev/null; do
  sleep 30
  kill -0 "$load" 2>/dev/null || break
  sample "$(date +%s)" >>"$OUT/samples.jsonl"
  tail -1 "$OUT/load.progress"
done
wait "$load"
sample end >>"$OUT/samples.jsonl"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = json.load(open(f"{out}/load.json"))
samples = [json.loads(l) for l in open(f"{out}/samples.jsonl")]
start, end = samples[0]["kinds"], samples[-1]["kinds"]
print()
print("| requests | errors | req/s | p50 ms | p99 ms |")
print("|---|---|---|---|---|")
print(f"| {load['sent']} | {load['failed']} | {load['rps']:.1f} | {load['p50_ms']:.1f} | {load['p99_ms']:.1f} |")
print()
print("| process | count start/end | RSS MiB start | RSS MiB end | growth | descriptors start | end |")
print("|---|---|---|---|---|---|---|")
missed = []
for kind in sorted(set(start) | set(end)):
    a, b = start.get(kind), end.get(kind)
    if not a or not b:
        print(f"| {kind} | {a and a['processes']}/{b and b['processes']} | - | - | - | - | - |")
        continue
    # Per process, so an instance cargo lambda added or retired does not count as growth.
    ra, rb = a["rss_kb"] / a["processes"], b["rss_kb"] / b["processes"]
    fa, fb = a["fds"] / a["processes"], b["fds"] / b["processes"]
    growth = (rb - ra) / ra * 100
    print(f"| {kind} | {a['processes']}/{b['processes']} | {ra/1024:.1f} | {rb/1024:.1f} | {growth:+.1f} % | {fa:.0f} | {fb:.0f} |")
    if growth > 10:
        missed.append(f"{kind} memory grew {growth:.1f} %")
    if fb > fa * 1.1 + 1:
        missed.append(f"{kind} descriptors grew {fa:.0f} -> {fb:.0f}")
if load["failed"]:
    missed.append(f"{load['failed']} errors")
print()
print("soak: goal met" if not missed else "soak: goal MISSED: " + "; ".join(missed))
sys.exit(1 if missed else 0)
PY
