//! With the `cuda` feature: each kernel file (`src/attention.cu`, `src/epilogue.cu`) to PTX
//! (`$OUT_DIR/<name>.ptx`), with the
//! toolkit the build points at (`NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the
//! path), for `CUDA_COMPUTE_CAP` (90 for H100/H200; default 80, which newer GPUs JIT).

use std::path::PathBuf;
use std::process::Command;

/// The kernel files under src/, each its own PTX module.
const KERNELS: [&str; 2] = ["attention", "epilogue"];

fn main() {
    for kernel in KERNELS {
        println!("cargo:rerun-if-changed=src/{kernel}.cu");
    }
    println!("cargo:rerun-if-changed=src/convert.cuh");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    // The launches pick the tensor-core attention only where the PTX holds it (sm_80+).
    println!("cargo:rustc-env=INFERENCEHUB_FUSED_COMPUTE_CAP={cap}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|home| PathBuf::from(home).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    for kernel in KERNELS {
        let source = format!("src/{kernel}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
            .arg(out_dir.join(format!("{kernel}.ptx")))
            .arg(&source)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{} failed ({s}) compiling {source}", nvcc.display()),
            Err(e) => panic!("cannot run {} ({e}): set NVCC or CUDA_HOME", nvcc.display()),
        }
    }
}
