//! `--device cpu|cuda|cuda:N` and `--dtype f32|f16|bf16`.

use anyhow::bail;
use candle_core::{DType, Device};

/// The compute dtype of text encoders: `name` if given, else f16 on CUDA and f32 on the CPU.
pub fn parse_dtype(name: Option<&str>, device: &Device) -> anyhow::Result<DType> {
    Ok(
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            None if device.is_cuda() => DType::F16,
            None | Some("f32") => DType::F32,
            Some("f16") => DType::F16,
            // candle's CPU backend multiplies no bf16 matrices.
            Some("bf16") if device.is_cpu() => {
                bail!("dtype bf16 runs on CUDA only: use f32 or f16")
            }
            Some("bf16") => DType::BF16,
            Some(other) => bail!("unknown dtype {other:?}: use f32, f16 or bf16"),
        },
    )
}

/// Parses a device name. CUDA names only work in a build with the `cuda` feature.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.as_str() {
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device {name:?}: use cpu, cuda or cuda:N"),
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> anyhow::Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> anyhow::Result<Device> {
    bail!(
        "device cuda:{ordinal} asked for, but this worker was built without CUDA; \
         rebuild with `cargo build --release --features cuda`"
    )
}

/// The free memory of `device` in bytes where it can be read (CUDA); `None` on the CPU.
pub fn free_bytes(device: &Device) -> anyhow::Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
            cuda.cuda_stream().context().bind_to_thread()?;
            let (free, _total) = mem_get_info()?;
            Ok(Some(free as u64))
        }
        _ => Ok(None),
    }
}

/// The CPU cores this process may use: its affinity mask and its cgroup's CPU quota
/// (`cpu.max`, `cpu.cfs_quota_us`), as the standard library reads them, rounded down, at
/// least 1. What the worker computes with unless `--threads` says otherwise.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_defaults_to_f32_on_the_cpu() {
        assert_eq!(parse_dtype(None, &Device::Cpu).ok(), Some(DType::F32));
        assert!(parse_dtype(Some("bf16"), &Device::Cpu).is_err());
        assert_eq!(
            parse_dtype(Some("F16"), &Device::Cpu).ok(),
            Some(DType::F16)
        );
        assert!(parse_dtype(Some("f8"), &Device::Cpu).is_err());
    }

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device(" CPU "), Ok(Device::Cpu)));
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_needs_the_feature() {
        let err = parse_device("cuda:0").expect_err("no cuda in this build");
        assert!(err.to_string().contains("--features cuda"));
    }
}
