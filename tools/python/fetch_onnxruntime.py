#!/usr/bin/env python3
"""Fetches ONNX Runtime's shared library from its PyPI wheel (the worker loads it at run
time): `fetch_onnxruntime.py PACKAGE VERSION OUT_DIR`, PACKAGE `onnxruntime` (CPU) or
`onnxruntime-gpu` (CUDA execution provider). Writes `OUT_DIR/libonnxruntime.so.VERSION`
and the provider libraries beside it; nothing else of the wheel (no Python module)."""
import glob
import os
import subprocess
import sys
import tempfile
import zipfile


def main():
    package, version, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", f"{package}=={version}", "-d", tmp],
            check=True,
        )
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        with zipfile.ZipFile(wheel) as z:
            libs = [n for n in z.namelist()
                    if n.startswith("onnxruntime/capi/lib") and ".so" in n]
            if not any(os.path.basename(n) == f"libonnxruntime.so.{version}" for n in libs):
                sys.exit(f"{wheel}: no libonnxruntime.so.{version} inside (found {libs})")
            for name in libs:
                target = os.path.join(out, os.path.basename(name))
                with z.open(name) as src, open(target + ".part", "wb") as dst:
                    dst.write(src.read())
                os.replace(target + ".part", target)
                print(f"{target} ({os.path.getsize(target) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
