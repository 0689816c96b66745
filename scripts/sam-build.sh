#!/usr/bin/env bash
# `make sam-build`: builds what a deployment ships, offline (`sam build`: the functions for
# arm64 through cargo-lambda and zig, release profile, stripped), then zips each function
# as `sam package` would and checks its size: every zip must stay at most MAX_ZIP_BYTES
# (default 6 MB). Prints a table of bootstrap and zip sizes; exits non-zero when a zip is
# too large. Also checks that aws-lc was built without its CPU-jitter entropy collector
# (.cargo/config.toml; its start-up was two thirds of a cold start's CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_ZIP_BYTES="${MAX_ZIP_BYTES:-6000000}"
BUILD_DIR="${SAM_BUILD_DIR:-.aws-sam/build}"

command -v sam >/dev/null || { echo "sam not found: python3 -m pip install aws-sam-cli" >&2; exit 1; }
command -v cargo-lambda >/dev/null || { echo "cargo-lambda not found: python3 -m pip install cargo-lambda ziglang" >&2; exit 1; }
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true

echo "== sam build (arm64, release, stripped functions)"
# sam colours its beta-feature warning whatever its output is: CI's log keeps plain text.
SAM_CLI_TELEMETRY=0 SAM_CLI_BETA_RUST_CARGO_LAMBDA=1 \
  sam build --beta-features --template-file template.yaml --build-dir "$BUILD_DIR" 2>&1 \
  | sed 's/\x1b\[[0-9;]*m//g'

echo "== aws-lc built for arm64 without the CPU-jitter entropy collector"
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
# The build script of the aws-lc-sys that sam just linked (the newest) logs the setting.
newest="$(ls -t "$TARGET"/aarch64-unknown-linux-gnu/release/build/aws-lc-sys-*/output 2>/dev/null | head -1)"
if [ -z "$newest" ] || ! grep -q "AWS_LC_SYS_NO_JITTER_ENTROPY': '1'" "$newest"; then
  echo "aws-lc-sys was built with its jitter collector (${newest:-no build output found}): .cargo/config.toml's [env] did not reach the build" >&2
  exit 1
fi
echo "yes ($newest)"

echo "== what a deployment ships"
python3 - "$BUILD_DIR" "$MAX_ZIP_BYTES" <<'PY'
import io, os, struct, sys, zipfile


def sections(path):
    """The section names of a 64-bit little-endian ELF file."""
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = data[headers[shstrndx][4]:][: headers[shstrndx][5]]
    return {names[h[0]:names.index(b"\0", h[0])].decode() for h in headers}


build, limit = sys.argv[1], int(sys.argv[2])
rows, over = [], []
for function in sorted(os.listdir(build)):
    folder = os.path.join(build, function)
    bootstrap = os.path.join(folder, "bootstrap")
    if not os.path.isfile(bootstrap):
        continue
    # As `sam package` uploads it: the folder zipped with deflate.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                z.write(path, os.path.relpath(path, folder))
    size, zipped = os.path.getsize(bootstrap), len(buffer.getvalue())
    names = sections(bootstrap)
    stripped = ".symtab" not in names and not any(n.startswith(".debug") for n in names)
    rows.append((function, size, zipped, stripped))
    if zipped > limit or not stripped:
        over.append(function)
print(f"| function | bootstrap | zip | stripped |")
print(f"|---|---:|---:|---|")
for function, size, zipped, stripped in rows:
    print(f"| {function} | {size / 1e6:.1f} MB | {zipped / 1e6:.2f} MB | {'yes' if stripped else 'NO'} |")
if not rows:
    sys.exit(f"no function was built under {build}")
if over:
    sys.exit(f"{', '.join(over)}: a zip over {limit / 1e6:.1f} MB or an unstripped bootstrap")
print(f"every zip is at most {limit / 1e6:.1f} MB")
PY
