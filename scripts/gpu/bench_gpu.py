"""The GPU check of `scripts/bench-gpu.sh run`, on a bare GPU machine (CUDA driver, PyTorch,
transformers; no Rust, no network). Everything else comes in the run folder that
`scripts/bench-gpu.sh prepare` made: the CUDA worker binary and the CUDA build of
`inferencehub-bench` (classify, bench-encoder, the load generator), the demo models (the
sentence encoder in f16), development certificates, the demo data and the CPU f32 answers.

1. correctness: the worker on the GPU in f16 and f32 answers the demo sets; labels and
   probabilities against the CPU f32 answers computed where the binary was built;
2. forward pass: the worker's fused kernels (attention, bias + GELU, bias + residual +
   LayerNorm) against its reference path (candle's operations) on padded batches, then the worker's encoder against PyTorch + transformers
   fp16 (the model's own AutoModel, same weights, same token ids, mean pooling on both
   sides, every result copied to the host), interleaved, at batch {1, 32, 128} x {16, 128}
   tokens, and the share of the card's fp16 tensor peak the worker reaches;
3. gRPC: 1 and 64 concurrent callers (the project's load generator) over mutual TLS against
   `serve --device cuda`.

Writes bench-gpu.md (the table) and bench-gpu.json into --out; every stage reports its own
failure and the others still run.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

CELLS = [(1, 16), (1, 128), (32, 16), (32, 128), (128, 16), (128, 128)]
# Dense fp16 tensor-core peak (TFLOP/s, no sparsity) of the cards the check runs on, from
# NVIDIA's data sheets (SXM parts).
FP16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10G": 125.0}
# "cuda" on the GPU machine; "cpu" for a dry run of this script where the binary was built.
DEVICE = "cuda"
LOAD_SECONDS = 8.0


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Worker:
    """The `bench-encoder` process: JSON lines over stdin/stdout."""

    def __init__(self, binary, model_dir, dtype, env=None):
        self.proc = subprocess.Popen(
            [binary, "bench-encoder", "--model-dir", str(model_dir), "--device", DEVICE, "--dtype", dtype],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.ready = json.loads(self.proc.stdout.readline())

    def call(self, request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=30)


def correctness(run, binary, report):
    log("correctness: demo sets on cuda f16 and f32 against the CPU f32 answers")
    rows = []
    for model, data in [("sentiment", "sentiment.tsv"), ("iris", "iris.csv")]:
        cpu = jsonl((run / f"cpu-{model}.jsonl").read_text())
        for dtype in ["f16", "f32"]:
            started = time.time()
            out = subprocess.run(
                [binary, "classify", "--model-dir", str(run / "models" / model), "--device", DEVICE,
                 "--dtype", dtype, "--input", str(run / "data" / data)],
                capture_output=True, text=True, timeout=300,
            )
            if out.returncode != 0:
                raise RuntimeError(f"classify {model} {dtype} failed: {out.stderr[-2000:]}")
            gpu = jsonl(out.stdout)
            same = sum(a["label"] == b["label"] for a, b in zip(cpu, gpu))
            worst = max(
                abs(x - y) for a, b in zip(cpu, gpu) for x, y in zip(a["probabilities"], b["probabilities"])
            )
            rows.append({"model": model, "dtype": dtype, "inputs": len(gpu), "same_labels": same,
                         "max_probability_diff": worst, "seconds": time.time() - started})
            log(f"  {model} {dtype}: {same}/{len(gpu)} labels as on the CPU, max |dp| {worst:.2e}")
    report["correctness"] = rows


def forward(run, binary, report):
    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()

    log(f"forward pass: worker vs PyTorch {torch.__version__} fp16")
    model_dir = run / "models" / "sentiment"
    net = AutoModel.from_pretrained(str(model_dir), dtype=torch.float16).to(DEVICE).eval()
    vocab = net.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def ids_for(batch, tokens):
        body = torch.randint(1000, vocab, (batch, tokens - 2), generator=generator)
        cls = torch.full((batch, 1), 101)
        sep = torch.full((batch, 1), 102)
        return torch.cat([cls, body, sep], dim=1)

    def torch_embed(ids):
        ids = ids.to(DEVICE)
        mask = torch.ones_like(ids)
        hidden = net(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1)).float().cpu()

    def torch_seconds(ids, reps):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(reps):
            torch_embed(ids)
        return time.perf_counter() - started

    worker = Worker(binary, model_dir, "f16")
    config = json.loads((model_dir / "config.json").read_text())
    peak = next((v for k, v in FP16_PEAK_TFLOPS.items() if k in sh("nvidia-smi --query-gpu=name --format=csv,noheader")), None)

    def flops(batch, tokens):
        # Matrix products of one pass (2 flops per multiply-add): q/k/v, output, two
        # feed-forward layers, and attention's scores and context.
        h, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        dense = batch * tokens * (3 * h * h + h * h + 2 * h * inner)
        attention = 2 * batch * tokens * tokens * h
        return 2 * layers * (dense + attention)

    rows = []
    try:
        with torch.inference_mode():
            check = ids_for(8, 64)
            ours = torch.tensor(worker.call({"cmd": "embed", "ids": check.tolist()})["embedding"])
            theirs = torch_embed(check)
            cosine = torch.nn.functional.cosine_similarity(ours, theirs).min().item()
            log(f"  same ids, fp16 both: min cosine similarity of the embeddings {cosine:.5f}")
            report["embedding_min_cosine"] = cosine
            # The fused kernels against the reference path, whole passes: padded batches
            # (every length from 2 to 128) and 128 x 128 unpadded.
            checks = []
            lengths = list(range(1, 129))
            padded = [ids_for(1, max(n, 2))[0].tolist() for n in lengths]
            for name, batch in [("padded, 2 to 128 tokens", padded), ("128 x 128", ids_for(128, 128).tolist())]:
                answer = worker.call({"cmd": "kernels", "ids": batch})
                checks.append({"batch": name, **answer})
                log(f"  kernels, fused vs reference, {name}: {answer}")
            report["kernels"] = checks
            # Each kernel alone against its CPU computation (f32, f16, bf16; edge shapes).
            answer = worker.call({"cmd": "kernel-checks"})
            report["kernel_checks"] = answer.get("checks", [])
            failed = [c for c in report["kernel_checks"] if not c["passed"]]
            log(f"  kernel checks: {len(report['kernel_checks'])} run, {len(failed)} failed"
                + (f", error: {answer['error']}" if "error" in answer else ""))
            for c in failed:
                log(f"    FAILED {c}")
            for batch, tokens in CELLS:
                ids = ids_for(batch, tokens)
                listed = ids.tolist()
                torch_seconds(ids, 3)
                worker.call({"cmd": "time", "ids": listed, "reps": 3})
                one = max(worker.call({"cmd": "time", "ids": listed, "reps": 2})["seconds"] / 2, 1e-5)
                reps = max(5, min(2000, int(0.4 / one)))
                best_w, best_t = float("inf"), float("inf")
                for _ in range(3):
                    best_w = min(best_w, worker.call({"cmd": "time", "ids": listed, "reps": reps})["seconds"] / reps)
                    best_t = min(best_t, torch_seconds(ids, reps) / reps)
                rows.append({"batch": batch, "tokens": tokens, "worker_ms": best_w * 1e3,
                             "torch_ms": best_t * 1e3, "speed_vs_torch": best_t / best_w,
                             "worker_tflops": flops(batch, tokens) / best_w / 1e12})
                if peak:
                    rows[-1]["share_of_fp16_peak"] = rows[-1]["worker_tflops"] / peak
                log(f"  batch {batch:3} x {tokens:3} tokens: worker {best_w * 1e3:8.3f} ms, "
                    f"PyTorch {best_t * 1e3:8.3f} ms, worker speed {best_t / best_w:.2f}x")
                if tokens == 128 and batch >= 32:
                    # Where the worker's time goes: GPU time between CUDA events at each stage's end.
                    stages = worker.call({"cmd": "profile", "ids": listed, "reps": 5})["stages"]
                    rows[-1]["stages_ms"] = {name: sec * 1e3 for name, sec in stages}
                    log("    stages (ms, GPU time between events): " + ", ".join(f"{n} {s * 1e3:.3f}" for n, s in stages))
    finally:
        worker.close()
    report["forward"] = rows


def grpc(run, binary, bench, report):
    log("gRPC: 1 and 64 concurrent callers, serve --device cuda")
    certs = run / "certs"
    serve = subprocess.Popen(
        [binary, "serve", "--device", DEVICE, "--model-dir", str(run / "models"),
         "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
         "--tls-client-ca", str(certs / "ca.pem"), "--max-batch-size", "64", "--max-wait", "2ms"],
        stdout=subprocess.PIPE, stderr=open(run / "serve.log", "w"), text=True,
    )
    try:
        line = serve.stdout.readline()
        port = line.split("grpc=")[1].split()[0].rsplit(":", 1)[1]
        env = dict(os.environ, IHUB_GATEWAY_WORKER_TLS_CA=str(certs / "ca.pem"),
                   IHUB_GATEWAY_WORKER_TLS_CERT=str(certs / "client.pem"),
                   IHUB_GATEWAY_WORKER_TLS_KEY=str(certs / "client.key"))
        addr = f"https://127.0.0.1:{port}"
        for _ in range(240):
            if subprocess.run([binary, "health", "--addr", addr], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        rows = []
        for callers in [1, 64]:
            out = subprocess.run(
                [bench, "load", "--worker-addr", addr, "--models", "sentiment", "--inputs",
                 str(run / "data" / "sentiment.tsv"), "--rate", "0", "--concurrency", str(callers),
                 "--duration", f"{int(LOAD_SECONDS * 1000)}ms", "--quiet", "--json"],
                env=env, capture_output=True, text=True, timeout=120,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"callers": callers, "per_second": summary["rps"], "p50_ms": summary["p50_ms"],
                   "p99_ms": summary["p99_ms"], "mean_batch": summary.get("mean_batch") or 0.0,
                   "errors": summary["failed"]}
            rows.append(row)
            log(f"  {callers:2} callers: {row['per_second']:.0f} predictions/s, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, mean batch {row['mean_batch']:.1f}, errors {row['errors']}")
        report["grpc"] = rows
        report["grpc_scaling"] = rows[1]["per_second"] / rows[0]["per_second"]
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def markdown(report):
    lines = [f"GPU: {report['gpu']}, driver {report['driver']}, CUDA worker built with toolkit 13.0 (sm_90 PTX); "
             f"PyTorch {report.get('torch', '?')}, transformers {report.get('transformers', '?')}.", ""]
    if "correctness" in report:
        lines += ["| model | dtype | inputs | labels as CPU f32 | max abs probability diff |", "|---|---|---:|---:|---:|"]
        for r in report["correctness"]:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['inputs']} | {r['same_labels']} | {r['max_probability_diff']:.1e} |")
        lines.append("")
    if "kernels" in report:
        lines += ["| fused vs reference kernels (f16, whole pass) | kernels chosen at load | max abs diff of hidden states | largest state |",
                  "|---|---|---:|---:|"]
        for r in report["kernels"]:
            diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else f"error: {r.get('error')}"
            lines.append(f"| {r['batch']} | {r.get('kernels', '?')} | {diff} | {r.get('largest_state', float('nan')):.2f} |")
        lines.append("")
    if report.get("kernel_checks"):
        lines += ["| kernel on the GPU vs its CPU computation | dtype | cases | passed | worst diff / largest value | allowed |",
                  "|---|---|---:|---:|---:|---:|"]
        groups = {}
        for c in report["kernel_checks"]:
            groups.setdefault((c["kernel"], c["dtype"]), []).append(c)
        for (kernel, dtype), cases in groups.items():
            # JSON has no NaN: a NaN difference arrives as null, and is the worst.
            ratios = [None if c["max_abs_diff"] is None else c["max_abs_diff"] / max(c["largest"], 1e-30) for c in cases]
            worst = float("nan") if None in ratios else max(ratios)
            lines.append(f"| {kernel} | {dtype} | {len(cases)} | {sum(c['passed'] for c in cases)} | {worst:.1e} | {cases[0]['tolerance']:.0e} |")
        lines.append("")
    if "forward" in report:
        lines += ["| batch x tokens | worker f16 (ms) | PyTorch fp16 (ms) | worker speed vs PyTorch | worker TFLOP/s | share of fp16 tensor peak |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in report["forward"]:
            share = f"{100 * r['share_of_fp16_peak']:.1f} %" if "share_of_fp16_peak" in r else "n/a"
            lines.append(f"| {r['batch']} x {r['tokens']} | {r['worker_ms']:.3f} | {r['torch_ms']:.3f} | {r['speed_vs_torch']:.2f}x "
                         f"| {r['worker_tflops']:.1f} | {share} |")
        lines.append("")
        for r in report["forward"]:
            if "stages_ms" in r:
                total = sum(r["stages_ms"].values())
                parts = ", ".join(f"{n} {v:.2f} ms ({100 * v / total:.0f} %)" for n, v in r["stages_ms"].items())
                lines.append(f"Worker stages at {r['batch']} x {r['tokens']} (GPU time between CUDA events, one pass): {parts}.")
        lines.append("")
    if "grpc" in report:
        lines += ["| Predict callers | predictions/s | p50 ms | p99 ms | mean batch | errors |", "|---:|---:|---:|---:|---:|---:|"]
        for r in report["grpc"]:
            lines.append(f"| {r['callers']} | {r['per_second']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} | {r['errors']} |")
        lines.append(f"\n64 callers / 1 caller: {report['grpc_scaling']:.1f}x")
    for stage, error in report.get("errors", {}).items():
        lines.append(f"\n{stage} failed: {error}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", action="append", choices=["correctness", "forward", "grpc"])
    parser.add_argument("--device", default="cuda", help="cpu: a dry run where the binary was built")
    parser.add_argument("--binary", help="worker binary (default: RUN_DIR/inferencehub-worker)")
    parser.add_argument("--bench-binary", help="measurement binary (default: RUN_DIR/inferencehub-bench)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per gRPC load level")
    args = parser.parse_args()
    global DEVICE, CELLS, LOAD_SECONDS
    DEVICE = args.device
    LOAD_SECONDS = args.seconds
    if DEVICE == "cpu":
        CELLS = [(1, 16), (4, 16)]
    run = args.run_dir.resolve()
    binary = str(Path(args.binary).resolve()) if args.binary else str(run / "inferencehub-worker")
    bench = str(Path(args.bench_binary).resolve()) if args.bench_binary else str(run / "inferencehub-bench")
    report = {
        "gpu": sh("nvidia-smi --query-gpu=name --format=csv,noheader") or DEVICE,
        "driver": sh("nvidia-smi --query-gpu=driver_version --format=csv,noheader") or "none",
    }
    try:
        import torch
        import transformers

        report["torch"], report["transformers"] = torch.__version__, transformers.__version__
    except ImportError as e:
        report["torch"] = f"missing ({e})"
    log(f"{report['gpu']} driver {report['driver']}")
    stages = [
        ("correctness", lambda: correctness(run, bench, report)),
        ("forward", lambda: forward(run, bench, report)),
        ("grpc", lambda: grpc(run, binary, bench, report)),
    ]
    for name, stage in stages:
        if args.only and name not in args.only:
            continue
        try:
            stage()
        except Exception as e:  # one stage's failure must not hide the others' results
            traceback.print_exc()
            report.setdefault("errors", {})[name] = str(e)[-1500:]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-gpu.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "bench-gpu.md").write_text(table)
    print(table)
    return 0 if not report.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
