#!/usr/bin/env bash
# The GPU check, in two halves (`make bench-gpu` runs the first):
#
#   scripts/bench-gpu.sh prepare [RUN_DIR]   here, no GPU needed: builds the CUDA worker
#       (make worker-cuda), and fills RUN_DIR (default .cache/gpu-run, < 64 MiB) with the
#       stripped binary (xz), the demo models (the sentence encoder's weights in f16), dev
#       certificates, the demo data and the CPU f32 answers to compare against.
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
  echo "== CPU worker (release), for the answers to compare against"
  cargo build --release -p inferencehub-worker --bin inferencehub-worker
  make models
  local cpu target
  target=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  cpu="$target/release/inferencehub-worker"
  rm -rf "$RUN"
  mkdir -p "$RUN/models" "$RUN/data"
  strip -o "$RUN/inferencehub-worker" "$target/cuda/release/inferencehub-worker"
  xz -T0 -6 -f "$RUN/inferencehub-worker"
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
  "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$RUN/inferencehub-worker.xz" "$RUN/inferencehub-worker"
  chmod +x "$RUN/inferencehub-worker"
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
  ldd "$RUN/inferencehub-worker" | grep -E "cuda|cublas|curand|not found" || true
  "$PYTHON" scripts/gpu/bench_gpu.py --run-dir "$RUN" --out "$out"
}

case "$mode" in
  prepare) prepare ;;
  run) run "$@" ;;
  *) echo "usage: $0 prepare|run [RUN_DIR] [OUT]" >&2; exit 2 ;;
esac
