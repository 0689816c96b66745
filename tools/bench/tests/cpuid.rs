//! The preload behind `make bench-worker ISA=avx2` (`cpuid/hide_avx512.c`): a process it is
//! loaded into reads no AVX-512 from CPUID, still reads AVX2 and FMA, and runs as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// Run alone with `IHUB_CPUID_REPORT` set, prints what this process's CPUID says (through
/// std's feature detection, which asks CPUID the first time, as ONNX Runtime and numpy do).
#[test]
fn report_cpu_features() {
    if std::env::var_os("IHUB_CPUID_REPORT").is_none() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    println!(
        "avx512f={} avx512bw={} avx2={} fma={}",
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx512bw"),
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma"),
    );
}

/// This test binary run again for [`report_cpu_features`] alone, with `env`; its report.
fn report(env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "report_cpu_features",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IHUB_CPUID_REPORT", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The harness writes "test report_cpu_features ... " before the test's own output.
    let at = stdout
        .find("avx512f=")
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    stdout[at..].lines().next().unwrap().to_string()
}

#[test]
fn the_preload_hides_avx512_and_nothing_else() {
    if !inferencehub_bench::cpuid::can_hide_avx512() {
        eprintln!("skipped: no CPUID faulting (cpuid_fault) on this CPU");
        return;
    }
    let plain = report(&[]);
    let target = tempfile::tempdir().unwrap();
    let library = inferencehub_bench::cpuid::hide_avx512_library(target.path()).unwrap();
    let hidden = report(&[("LD_PRELOAD", library.as_os_str())]);
    // AVX2 and FMA as the CPU has them; no AVX-512, whether the CPU has it or not.
    let has = |report: &str, flag: &str| report.contains(&format!("{flag}=true"));
    for flag in ["avx2", "fma"] {
        assert_eq!(has(&hidden, flag), has(&plain, flag), "{plain} / {hidden}");
    }
    assert!(
        hidden.contains("avx512f=false") && hidden.contains("avx512bw=false"),
        "{hidden}"
    );
}
