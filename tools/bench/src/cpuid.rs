//! A process that believes the CPU has no AVX-512: `cpuid/hide_avx512.c`, built here and
//! preloaded (`LD_PRELOAD`) into ONNX Runtime's process by `make bench-worker ISA=avx2`, so
//! that its AVX2 kernels run against the worker's AVX2 kernels on a host that has both.

use std::path::{Path, PathBuf};

/// Whether a process here can be told the CPU has no AVX-512: an x86 CPU with CPUID
/// faulting (`cpuid_fault` in `/proc/cpuinfo`, which the preload needs).
pub fn can_hide_avx512() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "cpuid_fault"))
}

/// `cpuid/hide_avx512.c` built (with `$CC`, else `cc`) into `<target>/hide_avx512.so`:
/// preloaded, it clears AVX-512 from what CPUID tells the process, or stops it (exit 3)
/// where it cannot.
pub fn hide_avx512_library(target: &Path) -> anyhow::Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cpuid/hide_avx512.c");
    let library = target.join("hide_avx512.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args([
            "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o",
        ])
        .arg(&library)
        .arg(&source)
        .status()
        .map_err(|e| anyhow::anyhow!("{cc}: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "{cc} could not build {}",
        source.display()
    );
    Ok(library)
}
