#!/usr/bin/env python3
"""Figures of one chaos scenario from `inferencehub-bench load --csv`: requests, failures,
failures later than GRACE ms after the fault, p99 of the requests answered before the fault
(a request sent just before it may be caught by it, and would count as "before" by its
start) and over the run's last 5 seconds (where latency has had time to return to normal),
the longest answer after the grace; with a window (FROM_MS TO_MS, e.g. a model swap), the
p99 of the requests sent in it. Prints one JSON object.

usage: load_stats.py CSV FAULT_MS GRACE_MS [FROM_MS TO_MS]"""
import csv
import json
import sys


def p99(values):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * 0.99))]


def main():
    if len(sys.argv) not in (4, 6):
        sys.exit(__doc__.splitlines()[-1])
    path, fault_ms, grace_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    window = tuple(map(float, sys.argv[4:6])) if len(sys.argv) >= 6 else None
    rows = list(csv.DictReader(open(path)))
    ok = lambda r: 200 <= int(r["status"]) < 300
    lat = lambda rs: [float(r["latency_ms"]) for r in rs]
    before = [r for r in rows if float(r["start_ms"]) + float(r["latency_ms"]) < fault_ms]
    after = [r for r in rows if float(r["start_ms"]) >= fault_ms + grace_ms]
    failed = [r for r in rows if not ok(r)]
    end = max((float(r["start_ms"]) for r in rows), default=0.0)
    last = [r for r in rows if float(r["start_ms"]) >= max(end - 5000, fault_ms + grace_ms)]
    statuses = {}
    for r in failed:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    stats = {
        "sent": len(rows),
        "failed": len(failed),
        "failed_late": sum(1 for r in after if not ok(r)),
        "statuses": statuses,
        "p99": round(p99(lat(rows)), 1),
        "p99_before": round(p99(lat(before)), 1),
        "p99_after": round(p99(lat([r for r in last if ok(r)])), 1),
        "max": round(max(lat(rows) or [0.0]), 1),
        "max_after": round(max(lat(after) or [0.0]), 1),
    }
    if window:
        inside = [r for r in rows if window[0] <= float(r["start_ms"]) <= window[1]]
        stats["window_requests"] = len(inside)
        stats["p99_window"] = round(p99(lat(inside)), 1)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
