#!/usr/bin/env bash
# Builds a CUDA toolkit prefix from NVIDIA's PyPI wheels into a local folder (never a system
# install), for `make worker-cuda` on a machine with no GPU and no CUDA installed.
#
#   scripts/cuda-toolkit.sh [PREFIX]      (default .cache/cuda/13.0)
#
# Prints the prefix. The versions are pinned to CUDA 13.0.x: candle compiles its kernels to
# PTX, which the driver JIT-compiles at load, and PTX from a newer toolkit than the driver
# fails (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); the GPU machines we target run driver 580
# (CUDA 13.0). Also writes:
#   - unversioned .so links (libcudart.so, libcublas.so, …) for the linker;
#   - stub/libcuda.so (SONAME libcuda.so.1): an empty definition of every `cu*` function of
#     include/cuda.h. candle links cudarc with dynamic linking, so the build needs a
#     libcuda to link against; at run time the driver's real libcuda.so.1 is loaded.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${1:-.cache/cuda/13.0}
PYTHON=${PYTHON:-python3}
# One CUDA release (13.0 update 2) for every component; keep in step with
# infra/worker-cuda.Dockerfile.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)

log() { echo "cuda-toolkit: $*" >&2; }

# The libcuda link stub, from the driver API header: every `cu*` name in it, both the
# declared ones and the versioned ones the header's macros map them to (cuMemAlloc ->
# cuMemAlloc_v2), each an empty function. Cheap, so always rebuilt.
stub() {
  mkdir -p "$PREFIX/stub"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$PREFIX/include/cuda.h" | sort -u \
    | awk '{printf "int %s(void) { return 999; }\n", $1}' > "$PREFIX/stub/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$PREFIX/stub/libcuda.so" "$PREFIX/stub/libcuda.c"
  ln -sf libcuda.so "$PREFIX/stub/libcuda.so.1"
  log "stub libcuda.so with $(wc -l < "$PREFIX/stub/libcuda.c") entry points"
}

if [ -f "$PREFIX/.complete" ] && [ "$(cat "$PREFIX/.complete")" = "${WHEELS[*]}" ]; then
  stub
  echo "$PREFIX"
  exit 0
fi
rm -rf "$PREFIX"
mkdir -p "$PREFIX/wheels" "$PREFIX/unpacked"
log "downloading ${#WHEELS[@]} wheels (about 700 MB) into $PREFIX/wheels"
"$PYTHON" -m pip download --no-deps --disable-pip-version-check --progress-bar off \
  --find-links "${CUDA_WHEELS:-$PREFIX/wheels}" \
  -d "$PREFIX/wheels" "${WHEELS[@]}" >&2
for wheel in "$PREFIX"/wheels/*.whl; do
  log "unpacking $(basename "$wheel")"
  "$PYTHON" -m zipfile -e "$wheel" "$PREFIX/unpacked"
done
# The CUDA 13 wheels install under nvidia/cu13/{bin,include,lib,nvvm}: one prefix.
root="$PREFIX/unpacked/nvidia/cu13"
[ -d "$root" ] || { log "no nvidia/cu13 in the wheels"; exit 1; }
for part in bin include lib nvvm; do
  [ -d "$root/$part" ] && mv "$root/$part" "$PREFIX/"
done
ln -sfn lib "$PREFIX/lib64"
chmod +x "$PREFIX"/bin/* "$PREFIX"/nvvm/bin/* 2>/dev/null || true

# Unversioned names for the linker (-lcudart, -lcublas, …).
for so in "$PREFIX"/lib/lib*.so.*; do
  base=$(basename "$so")
  plain=${base%%.so.*}.so
  [ -e "$PREFIX/lib/$plain" ] || ln -s "$base" "$PREFIX/lib/$plain"
done

stub
"$PREFIX/bin/nvcc" --version | tail -n 2 >&2
rm -rf "$PREFIX/wheels" "$PREFIX/unpacked"
echo "${WHEELS[*]}" > "$PREFIX/.complete"
echo "$PREFIX"
