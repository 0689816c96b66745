"""The cost of predictions on this architecture, from figures the project measures
(`scripts/cost-report.sh` writes them) and the price file `infra/prices.json`.

Per request: one HTTP API request, one Lambda invocation of the predict function (billed
duration x configured memory), one DynamoDB write (the rate-limit counter), and the bytes
through the Network Load Balancer. Per month, always: the load balancer's hours and
`MinWorkers` GPU instances; more instances when the traffic exceeds what one serves. A
second table prices two pools (infra/worker-stack.yaml deployed twice): the text models on
the GPU pool, the tabular ones on a CPU pool, each pool with its own load balancer.

Writes a Markdown table and an SVG plot (monthly cost against monthly predictions, the
always-on floor visible). Standard library only."""
import json
import math
import sys

HOURS_PER_MONTH = 730


def monthly_cost(m, prices, predictions, min_workers, instance="gpu_instance_hour"):
    p = {k: v["price"] for k, v in prices["prices"].items()}
    per_request = (
        p["http_api_request"]
        + p["lambda_request"]
        + p["lambda_arm64_gb_second"] * (m["lambda_billed_ms"] / 1000) * (m["lambda_memory_mb"] / 1024)
        + p["dynamodb_write_request_unit"] * m["dynamodb_writes_per_request"]
        # NLCU: 1 GB of TCP traffic per hour; the request and answer bytes, each way.
        + p["nlb_lcu_hour"] * m["bytes_per_request"] / 1e9
    )
    rate = predictions / (HOURS_PER_MONTH * 3600)
    workers = max(min_workers, math.ceil(rate / m["worker_predictions_per_s"]))
    fixed = HOURS_PER_MONTH * (p["nlb_hour"] + workers * p[instance])
    return per_request * predictions + fixed, per_request, workers


def pool_of(m):
    """The pool a model serves from with two pools: measured on a GPU, the GPU pool."""
    return "gpu" if "GPU" in m["worker_source"] or "H200" in m["worker_source"] else "cpu"


def svg(models, prices, min_workers, path):
    w, h, left, bottom, top, right = 760, 440, 80, 50, 30, 170
    xs = [10 ** (e / 4) for e in range(20, 41)]  # 1e5 .. 1e10 per month
    lo, hi = 1e2, 1e6
    X = lambda v: left + (math.log10(v) - 5) / 5 * (w - left - right)
    Y = lambda v: h - bottom - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (h - bottom - top)
    colours = ["#2457a6", "#c0392b", "#2f7d4f"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">Monthly cost (USD, log) against predictions per month (log), {prices["region"]}</text>']
    for e in range(5, 11):
        x = X(10 ** e)
        out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{h - bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{x}" y="{h - bottom + 16}" text-anchor="middle">1e{e}</text>')
    for e in range(2, 7):
        y = Y(10 ** e)
        out.append(f'<line x1="{left}" y1="{y}" x2="{w - right}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">${10 ** e:,}</text>')
    p = {k: v["price"] for k, v in prices["prices"].items()}
    floor = HOURS_PER_MONTH * (p["nlb_hour"] + min_workers * p["gpu_instance_hour"])
    out.append(f'<line x1="{left}" y1="{Y(floor)}" x2="{w - right}" y2="{Y(floor)}" stroke="#888" stroke-dasharray="5,4"/>')
    out.append(f'<text x="{w - right + 6}" y="{Y(floor) + 4}" fill="#555">always-on floor ${floor:,.0f}</text>')
    for i, m in enumerate(models):
        pts = " ".join(f"{X(x):.1f},{Y(monthly_cost(m, prices, x, min_workers)[0]):.1f}" for x in xs)
        out.append(f'<polyline fill="none" stroke="{colours[i % 3]}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{w - right + 6}" y="{top + 16 + 16 * i}" fill="{colours[i % 3]}">{m["model"]}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">predictions per month</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def main():
    measured_path, prices_path, table_path, svg_path = sys.argv[1:5]
    measured = json.load(open(measured_path))
    prices = json.load(open(prices_path))
    min_workers = measured["min_workers"]
    models = measured["models"]
    lines = [
        f"Prices: {prices['region']}, {prices['currency']}, read {prices['read_on']}.",
        "",
        "| model | function ms (measured) | billed ms | worker predictions/s per instance | variable $ per 1 M | $ per 1 M at 10 M/month | at 100 M/month | at 1 B/month | instances at 1 B/month |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        _, per_request, _ = monthly_cost(m, prices, 1, min_workers)
        at = lambda n: monthly_cost(m, prices, n, min_workers)
        lines.append(
            f"| {m['model']} | {m['lambda_ms_mean']:.2f} | {m['lambda_billed_ms']} | {m['worker_predictions_per_s']:,.0f} ({m['worker_source']}) "
            f"| {per_request * 1e6:.2f} | {at(1e7)[0] / 10:.2f} | {at(1e8)[0] / 100:.2f} | {at(1e9)[0] / 1000:.2f} | {at(1e9)[2]} |"
        )
    p = {k: v["price"] for k, v in prices["prices"].items()}
    floor = HOURS_PER_MONTH * (p["nlb_hour"] + min_workers * p["gpu_instance_hour"])
    lines += ["", f"Always-on floor: {min_workers} GPU instance(s) and the load balancer, ${floor:,.2f} per month."]
    # Two pools: each model on its pool's instances (the CPU pool's throughput is the one
    # measured on CPU cores; a c7i.2xlarge has 8 vCPUs against the 2 measured here, so it
    # is a floor).
    lines += [
        "",
        "Two pools (`make dev POOLS=2` locally): the text models on the GPU pool above, the tabular ones on a CPU pool of c7i.2xlarge instances, each pool behind its own load balancer.",
        "",
        "| model | pool | $ per 1 M at 10 M/month | at 100 M/month | at 1 B/month | instances at 1 B/month |",
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        pool = pool_of(m)
        at = lambda n: monthly_cost(m, prices, n, min_workers, f"{pool}_instance_hour")
        lines.append(
            f"| {m['model']} | {pool} | {at(1e7)[0] / 10:.2f} | {at(1e8)[0] / 100:.2f} | {at(1e9)[0] / 1000:.2f} | {at(1e9)[2]} |"
        )
    cpu_floor = HOURS_PER_MONTH * (p["nlb_hour"] + min_workers * p["cpu_instance_hour"])
    lines += [
        "",
        f"Always-on floor with two pools: ${floor:,.2f} (GPU pool) + ${cpu_floor:,.2f} (CPU pool) = ${floor + cpu_floor:,.2f} per month; "
        f"a deployment serving only tabular models needs only the CPU pool: ${cpu_floor:,.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    open(table_path, "w").write(text)
    print(text)
    svg(models, prices, min_workers, svg_path)


if __name__ == "__main__":
    main()
