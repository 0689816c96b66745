#!/usr/bin/env bash
# The GPU check, in two halves (`make bench-gpu` runs the first):
#
#   scripts/bench-gpu.sh prepare [RUN_DIR]   here, no GPU needed: builds the CUDA worker
#       (make worker-cuda) and the CUDA inferencehub-bench, and fills RUN_DIR (default
#       .cache/gpu-run, < 64 MiB) with both stripped binaries (xz), the demo models (the
#       sentence encoder's weights in f16), dev certificates, the demo data and the CPU f32
#       answers to compare against.
#   scripts/bench-gpu.sh run [RUN_DIR] [OUT]   on a bare GPU machine (CUDA 13.0 driver,
#       PyTorch, transformers; no Rust, no network): unpacks the binary, finds the CUDA
#       runtime libraries in PyTorch's Python packages, and runs scripts/gpu/bench_gpu.py,
#       which writes bench-gpu.md and bench-gpu.json into OUT (default RUN_DIR/out).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
RUN=${2:-.cache/gpu-run}
PYTHON=${PYTHON:-python3}

prepare() {
  echo "== CUDA worker (make worker-cuda)"
  make worker-cuda
  echo "== CUDA measurement tool (inferencehub-bench)"
  make bench-cuda
  echo "== CPU measurement tool (release), for the answers to compare against"
  cargo build --release -p inferencehub-bench --bin inferencehub-bench
  make models
  local cpu target
  target=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  cpu="$target/release/inferencehub-bench"
  rm -rf "$RUN"
  mkdir -p "$RUN/models" "$RUN/data"
  for bin in inferencehub-worker inferencehub-bench; do
    strip -o "$RUN/$bin" "$target/cuda/release/$bin"
    xz -T0 -6 -f "$RUN/$bin"
  done
  cp -r models/iris "$RUN/models/"
  cp -r models/sentiment "$RUN/models/"
  # The encoder's 91 MB of f32 weights do not travel; f16 halves them. The CPU answers
  # below come from these same f16-rounded weights, read back as f32.
  "$PYTHON" scripts/gpu/to_f16.py models/sentiment/model.safetensors "$RUN/models/sentiment/model.safetensors"
  cp tools/data/sentiment.tsv tools/data/iris.csv "$RUN/data/"
  cargo run -q -p inferencehub-tools -- gen-certs --out "$RUN/certs" >/dev/null
  for m in sentiment:sentiment.tsv iris:iris.csv; do
    "$cpu" classify --model-dir "$RUN/models/${m%%:*}" --device cpu --dtype f32 \
      --input "$RUN/data/${m#*:}" > "$RUN/cpu-${m%%:*}.jsonl"
  done
  du -sh "$RUN"
  echo "ready: carry $RUN and run: scripts/bench-gpu.sh run $RUN"
}

run() {
  local out=${3:-$RUN/out}
  mkdir -p "$out"
  # Python's lzma, not the xz tool: a bare machine may lack it.
  for bin in inferencehub-worker inferencehub-bench; do
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$RUN/$bin.xz" "$RUN/$bin"
    chmod +x "$RUN/$bin"
  done
  # cuBLAS, the CUDA runtime and cuRAND from the Python packages PyTorch brought; the
  # driver's libcuda.so.1 is on the system path.
  local libs
  libs=$("$PYTHON" - <<'PY'
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== libraries the worker loads"
  ldd "$RUN/inferencehub-worker" "$RUN/inferencehub-bench" | grep -E "cuda|cublas|curand|not found" || true
  "$PYTHON" scripts/gpu/bench_gpu.py --run-dir "$RUN" --out "$out"
}

case "$mode" in
  prepare) prepare ;;
  run) run "$@" ;;
  *) echo "usage: $0 prepare|run [RUN_DIR] [OUT]" >&2; exit 2 ;;
esac
