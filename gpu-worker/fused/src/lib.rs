//! Fused kernels of the worker's tensor encoder (the encoder that serves CUDA): each one
//! pass over memory where the tensor operations took several.
//!
//! - [`attention`]: multi-head self-attention straight from the q/k/v projection (its
//!   bias added as it is read), each sequence over its own length: no bias pass, no
//!   head-split copies, no score matrix in memory, no mask, softmax or transpose pass.
//! - [`bias_act`]: a product's bias and its activation (GELU or ReLU).
//! - [`bias_residual_norm`]: a product's bias, the residual and the LayerNorm after it.
//!
//! On CUDA each is one kernel (`src/*.cu`, compiled to PTX by build.rs). On the CPU each is
//! the plain computation, written for clarity: the reference the GPU check compares the
//! kernels against, and what the CPU tests hold to the unfused tensor operations.
//!
//! The CUDA launches need `unsafe` (allocating the buffer a kernel fills, and the launch
//! itself: both FFI), which is why this is a crate of its own with `unsafe_code = "deny"`
//! rather than the workspace's `forbid` (the CPU kernels' prefetch hint is the workspace's
//! only other `unsafe` statement).

mod attention;
mod check;
#[cfg(feature = "cuda")]
mod cuda;
mod epilogue;

pub use attention::attention;
pub use check::{KernelCheck, check_kernels};
pub use epilogue::{Activation, bias_act, bias_residual_norm};

/// Head sizes the CUDA attention kernel is compiled for (MiniLM's 32; 64 for BERT-base and
/// -large, MPNet, E5, BGE). Other sizes run the reference path.
pub const CUDA_HEAD_SIZES: [usize; 2] = [32, 64];

/// Whether `device` has the fused kernels for heads of `head_size`: CUDA with the `cuda`
/// feature, for [`CUDA_HEAD_SIZES`]. (On the CPU the ops run their plain computation:
/// correct for any size, but single-threaded, so the CPU keeps the tensor operations.)
pub fn has_kernels(device: &candle_core::Device, head_size: usize) -> bool {
    matches!(device, candle_core::Device::Cuda(_))
        && cfg!(feature = "cuda")
        && CUDA_HEAD_SIZES.contains(&head_size)
}

/// The contiguous `[start, end)` of a layout, or an error naming the op.
fn contiguous(layout: &candle_core::Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: inputs must be contiguous")))
}

/// Every op's CUDA side takes its float inputs in one dtype (the CPU side matches pairs).
#[cfg(feature = "cuda")]
fn same_dtype(dtypes: &[candle_core::DType], op: &str) -> candle_core::Result<()> {
    if dtypes.iter().any(|d| *d != dtypes[0]) {
        candle_core::bail!("{op}: inputs of mixed dtypes {dtypes:?}");
    }
    Ok(())
}

/// What the tests of every op use.
#[cfg(test)]
mod testing {
    use candle_core::{Shape, Tensor};

    /// Deterministic, varied values in [-2.4, 2.4], different for each `seed`.
    pub fn values(shape: impl Into<Shape>, seed: f32) -> Tensor {
        crate::check::pattern(shape, seed).unwrap()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_cpu_has_no_kernels() {
        assert!(!has_kernels(&Device::Cpu, 32));
    }
}
