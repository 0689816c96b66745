//! Each kernel on a device against its plain computation on the CPU, over shapes that reach
//! the kernels' edges: the GPU side of the kernels' tests (`inferencehub-bench`'s
//! `bench-encoder` runs it on the card; on the CPU it compares the reference with itself).

use candle_core::{DType, Device, Result, Shape, Tensor};

use crate::{Activation, attention, bias_act, bias_residual_norm};

/// One kernel, one dtype, one shape: its largest difference from the CPU computation.
#[derive(Debug, Clone)]
pub struct KernelCheck {
    /// `attention`, `bias_act` or `bias_residual_norm`.
    pub kernel: &'static str,
    /// The inputs' (and output's) dtype.
    pub dtype: DType,
    /// The shape and what it reaches (lengths, activation).
    pub case: String,
    /// The largest absolute difference between the device's output and the CPU's.
    pub max_abs_diff: f32,
    /// The largest absolute value of the CPU's output.
    pub largest: f32,
    /// The difference allowed, relative to `largest`.
    pub tolerance: f32,
}

impl KernelCheck {
    /// Whether the device's output is within `tolerance` of the largest output value.
    pub fn passed(&self) -> bool {
        self.max_abs_diff.is_finite() && self.max_abs_diff <= self.tolerance * self.largest
    }
}

/// Deterministic, varied values in [-2.4, 2.4], different for each `seed` (f32, CPU).
pub(crate) fn pattern(shape: impl Into<Shape>, seed: f32) -> Result<Tensor> {
    let shape = shape.into();
    let data: Vec<f32> = (0..shape.elem_count())
        .map(|i| 2.0 * ((i as f32) * 0.37 + seed).sin() * ((i % 7) as f32 / 7.0 + 0.3))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Relative tolerance per dtype: the storage type's rounding of inputs, of the tensor
/// cores' probabilities (f16, bf16) and of the output, with room for the order of sums.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 1e-2,
        DType::BF16 => 5e-2,
        _ => 1e-4,
    }
}

/// Runs `op` on the CPU and on `device` over the same inputs (made on the CPU in f32,
/// converted to `dtype`; u32 inputs kept), and compares the outputs in f32.
fn compare(
    kernel: &'static str,
    case: String,
    dtype: DType,
    device: &Device,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<KernelCheck> {
    let typed = inputs
        .iter()
        .map(|t| {
            if t.dtype() == DType::U32 {
                Ok(t.clone())
            } else {
                t.to_dtype(dtype)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let on_device = typed
        .iter()
        .map(|t| t.to_device(device))
        .collect::<Result<Vec<_>>>()?;
    let expected = op(&typed)?.to_dtype(DType::F32)?;
    let got = op(&on_device)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?;
    let max = |t: &Tensor| -> Result<f32> { t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
    // NaN anywhere makes the difference NaN, which fails the check.
    let diff = (&got - &expected)?;
    let nan = got
        .ne(&got)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?
        > 0.0;
    Ok(KernelCheck {
        kernel,
        dtype,
        case,
        max_abs_diff: if nan { f32::NAN } else { max(&diff)? },
        largest: max(&expected)?,
        tolerance: tolerance(dtype),
    })
}

/// Every kernel against its CPU computation on `device`, in f32, f16 and bf16: attention
/// for heads of 32 and 64 over lengths that end inside and on the edges of the query and
/// key tiles (1 to 130 tokens, padded and unpadded sequences in one batch), the epilogues
/// over widths that are and are not multiples of the block.
pub fn check_kernels(device: &Device) -> Result<Vec<KernelCheck>> {
    let mut checks = Vec::new();
    let attention_cases: [(usize, &[u32]); 6] = [
        (1, &[1, 1]),
        (7, &[7, 3, 1]),
        (16, &[16, 9]),
        (33, &[33, 17, 2]),
        (77, &[77, 64, 65]),
        (130, &[130, 128, 1]),
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (heads, d) in [(3, 32), (2, 64)] {
            for (seed, (tokens, lengths)) in attention_cases.iter().enumerate() {
                let batch = lengths.len();
                let width = 3 * heads * d;
                let inputs = [
                    pattern((batch, *tokens, width), seed as f32)?,
                    (pattern(width, 0.5 + seed as f32)? * 0.2)?,
                    Tensor::new(*lengths, &Device::Cpu)?,
                ];
                let case =
                    format!("{batch} x {tokens} tokens, lengths {lengths:?}, {heads} heads of {d}");
                checks.push(compare("attention", case, dtype, device, &inputs, |t| {
                    attention(&t[0], &t[1], &t[2], heads)
                })?);
            }
        }
        for act in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
            for (rows, n) in [(3, 37), (5, 1536)] {
                let inputs = [pattern((rows, n), 1.0)?, pattern(n, 2.0)?];
                let case = format!("{rows} x {n}, {act:?}");
                checks.push(compare("bias_act", case, dtype, device, &inputs, |t| {
                    bias_act(&t[0], &t[1], act)
                })?);
            }
        }
        for (rows, n) in [(3, 37), (5, 384), (2, 1024)] {
            let inputs = [
                pattern((rows, n), 3.0)?,
                pattern((rows, n), 4.0)?,
                pattern((3, n), 5.0)?,
            ];
            let case = format!("{rows} x {n}");
            checks.push(compare(
                "bias_residual_norm",
                case,
                dtype,
                device,
                &inputs,
                |t| bias_residual_norm(&t[0], &t[1], &t[2], 1e-12),
            )?);
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_matches_itself_and_a_wrong_answer_fails() {
        let checks = check_kernels(&Device::Cpu).unwrap();
        assert_eq!(checks.len(), 3 * (2 * 6 + 3 * 2 + 3));
        assert!(checks.iter().all(KernelCheck::passed), "{checks:?}");
        assert!(checks.iter().all(|c| c.largest > 0.1));
        let mut wrong = checks[0].clone();
        wrong.max_abs_diff = wrong.largest;
        assert!(!wrong.passed());
        wrong.max_abs_diff = f32::NAN;
        assert!(!wrong.passed());
    }
}
