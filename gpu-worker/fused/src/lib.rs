//! Fused kernels of the worker's tensor encoder (the encoder that serves CUDA).
//!
//! [`attention`]: multi-head self-attention computed straight from the fused query/key/value
//! projection, `[batch, tokens, 3 × hidden]`, into the context `[batch, tokens, hidden]`,
//! each sequence attending over its first `lengths[i]` tokens. On CUDA it is one kernel
//! (`src/attention.cu`): no head-split copies, no score matrix in device memory, no
//! separate mask, softmax or transpose pass. On the CPU it is the plain reference the GPU
//! check compares the kernel against: scores, softmax and weighted sum, row by row.
//!
//! The CUDA launch is the one place in the workspace that needs `unsafe` (allocating the
//! buffer the kernel fills, and the launch itself: both FFI), which is why this is a crate
//! of its own with `unsafe_code = "deny"` rather than the workspace's `forbid`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

/// Head sizes the CUDA kernel is compiled for (MiniLM's 32; 64 for BERT-base and -large,
/// MPNet, E5, BGE). Other sizes run the reference path.
pub const CUDA_HEAD_SIZES: [usize; 2] = [32, 64];

/// Whether `device` has a fused kernel for heads of `head_size`: CUDA with the `cuda`
/// feature, for [`CUDA_HEAD_SIZES`]. (On the CPU, [`attention`] runs the plain reference:
/// correct for any size, but single-threaded, so the CPU keeps the tensor operations.)
pub fn has_kernel(device: &candle_core::Device, head_size: usize) -> bool {
    matches!(device, candle_core::Device::Cuda(_))
        && cfg!(feature = "cuda")
        && CUDA_HEAD_SIZES.contains(&head_size)
}

/// Self-attention of `qkv` (`[batch, tokens, 3 × hidden]`: each token's queries, keys,
/// values, heads side by side, biases added) over `heads` heads, scores scaled by
/// `1/√head size`; sequence `i` attends over its first `lengths[i]` tokens (`lengths`: u32
/// `[batch]`, padding after). Returns the context `[batch, tokens, hidden]` in `qkv`'s
/// dtype (f32, f16 or bf16), computed in f32. Rows past a sequence's length are computed
/// too (over its real keys) and are for the caller to ignore.
pub fn attention(qkv: &Tensor, lengths: &Tensor, heads: usize) -> Result<Tensor> {
    let qkv = qkv.contiguous()?;
    let lengths = lengths.contiguous()?;
    qkv.apply_op2_no_bwd(&lengths, &Attention { heads })
}

struct Attention {
    heads: usize,
}

/// The sizes of one call, checked.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_size: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_size as f32).sqrt()
    }

    fn output(&self) -> Shape {
        Shape::from((self.batch, self.tokens, self.hidden()))
    }
}

impl Attention {
    fn dims(&self, qkv: &Layout, lengths: &Layout, lengths_dtype: DType) -> Result<Dims> {
        let (batch, tokens, width) = qkv.shape().dims3()?;
        let count = lengths.shape().dims1()?;
        if count != batch {
            candle_core::bail!("fused attention: {count} lengths for a batch of {batch}");
        }
        if lengths_dtype != DType::U32 {
            candle_core::bail!("fused attention: lengths must be u32, not {lengths_dtype:?}");
        }
        if self.heads == 0 || !width.is_multiple_of(3 * self.heads) || width == 0 {
            candle_core::bail!(
                "fused attention: a width of {width} is not 3 × {} heads",
                self.heads
            );
        }
        if batch == 0 || tokens == 0 {
            candle_core::bail!("fused attention: an empty batch");
        }
        if qkv.contiguous_offsets().is_none() || lengths.contiguous_offsets().is_none() {
            candle_core::bail!("fused attention: inputs must be contiguous");
        }
        Ok(Dims {
            batch,
            tokens,
            heads: self.heads,
            head_size: width / (3 * self.heads),
        })
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        lengths: &CpuStorage,
        lengths_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(qkv_layout, lengths_layout, lengths.dtype())?;
        let (l0, l1) = lengths_layout
            .contiguous_offsets()
            .unwrap_or((0, dims.batch));
        let lengths = &lengths.as_slice::<u32>()?[l0..l1];
        let (q0, q1) = qkv_layout.contiguous_offsets().unwrap_or_default();
        let out = match qkv {
            CpuStorage::F32(v) => reference(&v[q0..q1], lengths, dims),
            CpuStorage::F16(v) => reference(&v[q0..q1], lengths, dims),
            CpuStorage::BF16(v) => reference(&v[q0..q1], lengths, dims),
            other => candle_core::bail!(
                "fused attention: {:?} is not a float type it computes in",
                other.dtype()
            ),
        };
        Ok((out, dims.output()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qkv: &candle_core::CudaStorage,
        qkv_layout: &Layout,
        lengths: &candle_core::CudaStorage,
        lengths_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = self.dims(qkv_layout, lengths_layout, lengths.dtype())?;
        let args = cuda::Args {
            qkv,
            qkv_layout,
            lengths,
            lengths_layout,
            dims,
        };
        let out = match qkv.dtype() {
            DType::F32 => cuda::launch::<f32>(args, "f32")?,
            DType::F16 => cuda::launch::<half::f16>(args, "f16")?,
            DType::BF16 => cuda::launch::<half::bf16>(args, "bf16")?,
            other => {
                candle_core::bail!("fused attention: {other:?} is not a float type it computes in")
            }
        };
        Ok((out, dims.output()))
    }
}

/// The plain computation, row by row: scores `q·k × scale` over the sequence's real keys,
/// softmax (the maximum subtracted), then the weighted sum of the values; in f32.
fn reference<T: WithDType>(qkv: &[T], lengths: &[u32], dims: Dims) -> CpuStorage {
    let (t, d, h) = (dims.tokens, dims.head_size, dims.hidden());
    let stride = 3 * h;
    let scale = dims.scale();
    let at = |i: usize| qkv[i].to_f64() as f32;
    let mut out = vec![T::zero(); dims.batch * t * h];
    let mut scores = Vec::with_capacity(t);
    for (seq, &len) in lengths.iter().enumerate() {
        let len = (len as usize).min(t);
        let base = seq * t * stride;
        for head in 0..dims.heads {
            for row in 0..t {
                let q = base + row * stride + head * d;
                scores.clear();
                for key in 0..len {
                    let k = base + key * stride + h + head * d;
                    let dot: f32 = (0..d).map(|c| at(q + c) * at(k + c)).sum();
                    scores.push(dot * scale);
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                let dst = (seq * t + row) * h + head * d;
                for c in 0..d {
                    let v: f32 = scores
                        .iter()
                        .enumerate()
                        .map(|(key, p)| p * at(base + key * stride + 2 * h + head * d + c))
                        .sum();
                    out[dst + c] = T::from_f64(f64::from(v * inv));
                }
            }
        }
    }
    T::to_cpu_storage_owned(out)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Dims;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    /// The kernels, compiled by build.rs.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));

    /// Query rows per block (one thread each); fewer when the sequences are shorter.
    const QUERIES_PER_BLOCK: usize = 64;

    pub(super) struct Args<'a> {
        pub qkv: &'a CudaStorage,
        pub qkv_layout: &'a Layout,
        pub lengths: &'a CudaStorage,
        pub lengths_layout: &'a Layout,
        pub dims: Dims,
    }

    #[allow(unsafe_code)]
    pub(super) fn launch<T: CudaDType + DeviceRepr>(
        args: Args<'_>,
        dtype: &str,
    ) -> Result<CudaStorage> {
        let Args {
            qkv,
            qkv_layout,
            lengths,
            lengths_layout,
            dims,
        } = args;
        let d = dims.head_size;
        if !super::CUDA_HEAD_SIZES.contains(&d) {
            candle_core::bail!("fused attention: no CUDA kernel for heads of {d}");
        }
        let device = qkv.device.clone();
        let func = device.get_or_load_custom_func(
            &format!("attention_{dtype}_d{d}"),
            "inferencehub_fused_attention",
            PTX,
        )?;
        let (q0, q1) = qkv_layout.contiguous_offsets().unwrap_or_default();
        let (l0, l1) = lengths_layout.contiguous_offsets().unwrap_or_default();
        let src = qkv.as_cuda_slice::<T>()?.slice(q0..q1);
        let lens = lengths.as_cuda_slice::<u32>()?.slice(l0..l1);
        let count = dims.batch * dims.tokens * dims.hidden();
        // SAFETY: the kernel below writes every element: each (sequence, head, row) thread
        // stores its row's `d` columns of that head, and the grid covers every row.
        let out = unsafe { device.alloc::<T>(count)? };
        let block = QUERIES_PER_BLOCK.min(dims.tokens.div_ceil(32) * 32);
        let cfg = LaunchConfig {
            grid_dim: (
                dims.tokens.div_ceil(block) as u32,
                dims.heads as u32,
                dims.batch as u32,
            ),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let tokens = dims.tokens as i32;
        let heads = dims.heads as i32;
        let scale = dims.scale();
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&lens);
        builder.arg(&out);
        builder.arg(&tokens);
        builder.arg(&heads);
        builder.arg(&scale);
        // SAFETY: the arguments are the kernel's parameters in order and type (T*, u32*,
        // T*, int, int, float); `src` holds batch × tokens × 3 × heads × d elements,
        // `lens` batch and `out` batch × tokens × heads × d, which is what the kernel
        // indexes for this grid.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic, varied values in [-2, 2].
    fn qkv(batch: usize, tokens: usize, width: usize) -> Tensor {
        let data: Vec<f32> = (0..batch * tokens * width)
            .map(|i| 2.0 * ((i as f32) * 0.37).sin() * ((i % 7) as f32 / 7.0 + 0.3))
            .collect();
        Tensor::from_vec(data, (batch, tokens, width), &Device::Cpu).unwrap()
    }

    /// What the tensor encoder computed before the fused path: per-head score matrices,
    /// a large negative bias on padded keys, softmax over the last dimension, context.
    fn unfused(qkv: &Tensor, lengths: &[u32], heads: usize) -> Tensor {
        let (b, t, w) = qkv.dims3().unwrap();
        let d = w / 3 / heads;
        let parts = qkv
            .reshape((b, t, 3, heads, d))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let q = (parts.get(0).unwrap().contiguous().unwrap() / (d as f64).sqrt()).unwrap();
        let k = parts.get(1).unwrap().contiguous().unwrap();
        let v = parts.get(2).unwrap().contiguous().unwrap();
        let bias: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |j| if j < l as usize { 0.0 } else { -10_000.0 }))
            .collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), &Device::Cpu).unwrap();
        let scores = q
            .matmul(&k.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let probs = candle_core::Tensor::exp(
            &(scores
                .broadcast_sub(&scores.max_keepdim(3).unwrap())
                .unwrap()),
        )
        .unwrap();
        let probs = probs.broadcast_div(&probs.sum_keepdim(3).unwrap()).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, heads * d))
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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

    #[test]
    fn matches_the_unfused_computation_with_padding() {
        let (b, t, heads, d) = (3, 21, 4, 8);
        let qkv = qkv(b, t, 3 * heads * d);
        let lengths = [21u32, 17, 1];
        let lens = Tensor::new(&lengths[..], &Device::Cpu).unwrap();
        let fused = attention(&qkv, &lens, heads).unwrap();
        assert_eq!(fused.dims(), &[b, t, heads * d]);
        let diff = max_diff(&fused, &unfused(&qkv, &lengths, heads));
        assert!(diff < 1e-5, "fused vs unfused: {diff}");
    }

    #[test]
    fn half_precision_stays_close_to_f32() {
        let (b, t, heads, d) = (2, 9, 2, 32);
        let qkv = qkv(b, t, 3 * heads * d);
        let lens = Tensor::new(&[9u32, 4], &Device::Cpu).unwrap();
        let full = attention(&qkv, &lens, heads).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let half = attention(&qkv.to_dtype(dtype).unwrap(), &lens, heads).unwrap();
            assert_eq!(half.dtype(), dtype);
            let diff = max_diff(&half.to_dtype(DType::F32).unwrap(), &full);
            assert!(diff < 3e-2, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let qkv = qkv(2, 4, 24);
        let two = Tensor::new(&[4u32, 4], &Device::Cpu).unwrap();
        let one = Tensor::new(&[4u32], &Device::Cpu).unwrap();
        assert!(
            attention(&qkv, &one, 2).is_err(),
            "one length for two sequences"
        );
        assert!(attention(&qkv, &two, 5).is_err(), "24 is not 3 × 5 heads");
        assert!(attention(&qkv, &two, 0).is_err(), "no heads");
        let floats = Tensor::new(&[4f32, 4.0], &Device::Cpu).unwrap();
        assert!(attention(&qkv, &floats, 2).is_err(), "lengths must be u32");
        let flat = qkv.flatten_all().unwrap();
        assert!(attention(&flat, &two, 2).is_err(), "qkv must be 3-D");
    }

    #[test]
    fn lengths_past_the_tokens_are_clamped() {
        let qkv = qkv(1, 5, 12);
        let long = Tensor::new(&[500u32], &Device::Cpu).unwrap();
        let exact = Tensor::new(&[5u32], &Device::Cpu).unwrap();
        let a = attention(&qkv, &long, 2).unwrap();
        let b = attention(&qkv, &exact, 2).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }

    #[test]
    fn the_cpu_has_no_kernel() {
        assert!(!has_kernel(&Device::Cpu, 32));
    }
}
