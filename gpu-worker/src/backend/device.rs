//! `--device cpu|cuda|cuda:N`.

use anyhow::bail;
use candle_core::Device;

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

#[cfg(test)]
mod tests {
    use super::*;

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
