//! With the `cuda` feature: src/attention.cu to PTX (`$OUT_DIR/attention.ptx`), with the
//! toolkit the build points at (`NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the
//! path), for `CUDA_COMPUTE_CAP` (90 for H100/H200; default 80, which newer GPUs JIT).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/attention.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|home| PathBuf::from(home).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("attention.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/attention.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed ({s}) compiling src/attention.cu", nvcc.display()),
        Err(e) => panic!("cannot run {} ({e}): set NVCC or CUDA_HOME", nvcc.display()),
    }
}
