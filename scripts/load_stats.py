#!/usr/bin/env python3
"""Figures of one chaos scenario from `inferencehub-dev load --csv`: requests, failures,
failures later than GRACE ms after the fault, p99 before the fault and over the run's
last 5 seconds (where latency has had time to return to normal), the longest answer after
the grace. Prints one JSON object."""
import csv
import json
import sys


def p99(values):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * 0.99))]


def main():
    path, fault_ms, grace_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    rows = list(csv.DictReader(open(path)))
    ok = lambda r: 200 <= int(r["status"]) < 300
    lat = lambda rs: [float(r["latency_ms"]) for r in rs]
    before = [r for r in rows if float(r["start_ms"]) < fault_ms]
    after = [r for r in rows if float(r["start_ms"]) >= fault_ms + grace_ms]
    failed = [r for r in rows if not ok(r)]
    end = max((float(r["start_ms"]) for r in rows), default=0.0)
    last = [r for r in rows if float(r["start_ms"]) >= max(end - 5000, fault_ms + grace_ms)]
    statuses = {}
    for r in failed:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(json.dumps({
        "sent": len(rows),
        "failed": len(failed),
        "failed_late": sum(1 for r in after if not ok(r)),
        "statuses": statuses,
        "p99": round(p99(lat(rows)), 1),
        "p99_before": round(p99(lat(before)), 1),
        "p99_after": round(p99(lat([r for r in last if ok(r)])), 1),
        "max": round(max(lat(rows) or [0.0]), 1),
        "max_after": round(max(lat(after) or [0.0]), 1),
    }))


if __name__ == "__main__":
    main()
