//! Self-attention from the fused q/k/v projection.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

use crate::contiguous;

/// Self-attention of `qkv` (`[batch, tokens, 3 × hidden]`: each token's queries, keys,
/// values, heads side by side, before the projection's `bias` `[3 × hidden]` is added)
/// over `heads` heads, scores scaled by `1/√head size`; sequence `i` attends over its first
/// `lengths[i]` tokens (`lengths`: u32 `[batch]`, padding after). Returns the context
/// `[batch, tokens, hidden]` in `qkv`'s dtype (f32, f16 or bf16), computed in f32. Rows past
/// a sequence's length are computed too (over its real keys) and are for the caller to
/// ignore.
pub fn attention(qkv: &Tensor, bias: &Tensor, lengths: &Tensor, heads: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op3_no_bwd(
        &bias.contiguous()?,
        &lengths.contiguous()?,
        &Attention { heads },
    )
}

struct Attention {
    heads: usize,
}

/// The sizes of one call, checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_size: usize,
}

impl Dims {
    pub fn hidden(&self) -> usize {
        self.heads * self.head_size
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.head_size as f32).sqrt()
    }

    fn output(&self) -> Shape {
        Shape::from((self.batch, self.tokens, self.hidden()))
    }
}

impl Attention {
    fn dims(
        &self,
        qkv: &Layout,
        bias: &Layout,
        lengths: &Layout,
        lengths_dtype: DType,
    ) -> Result<Dims> {
        let (batch, tokens, width) = qkv.shape().dims3()?;
        if lengths.shape().dims1()? != batch {
            candle_core::bail!(
                "fused attention: {:?} lengths for a batch of {batch}",
                lengths.shape()
            );
        }
        if lengths_dtype != DType::U32 {
            candle_core::bail!("fused attention: lengths must be u32, not {lengths_dtype:?}");
        }
        if self.heads == 0 || width == 0 || !width.is_multiple_of(3 * self.heads) {
            candle_core::bail!(
                "fused attention: a width of {width} is not 3 × {} heads",
                self.heads
            );
        }
        if bias.shape().dims1()? != width {
            candle_core::bail!(
                "fused attention: a bias of {:?} for a width of {width}",
                bias.shape()
            );
        }
        if batch == 0 || tokens == 0 {
            candle_core::bail!("fused attention: an empty batch");
        }
        for layout in [qkv, bias, lengths] {
            contiguous(layout, "fused attention")?;
        }
        Ok(Dims {
            batch,
            tokens,
            heads: self.heads,
            head_size: width / (3 * self.heads),
        })
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
        lengths: &CpuStorage,
        lengths_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(qkv_layout, bias_layout, lengths_layout, lengths.dtype())?;
        let (l0, l1) = contiguous(lengths_layout, "fused attention")?;
        let lengths = &lengths.as_slice::<u32>()?[l0..l1];
        let (q0, q1) = contiguous(qkv_layout, "fused attention")?;
        let (b0, b1) = contiguous(bias_layout, "fused attention")?;
        let out = match (qkv, bias) {
            (CpuStorage::F32(v), CpuStorage::F32(b)) => {
                reference(&v[q0..q1], &b[b0..b1], lengths, dims)
            }
            (CpuStorage::F16(v), CpuStorage::F16(b)) => {
                reference(&v[q0..q1], &b[b0..b1], lengths, dims)
            }
            (CpuStorage::BF16(v), CpuStorage::BF16(b)) => {
                reference(&v[q0..q1], &b[b0..b1], lengths, dims)
            }
            _ => candle_core::bail!(
                "fused attention: {:?} with a {:?} bias is not a float type it computes in",
                qkv.dtype(),
                bias.dtype()
            ),
        };
        Ok((out, dims.output()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qkv: &candle_core::CudaStorage,
        qkv_layout: &Layout,
        bias: &candle_core::CudaStorage,
        bias_layout: &Layout,
        lengths: &candle_core::CudaStorage,
        lengths_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = self.dims(qkv_layout, bias_layout, lengths_layout, lengths.dtype())?;
        crate::same_dtype(&[qkv.dtype(), bias.dtype()], "fused attention")?;
        let args = crate::cuda::AttentionArgs {
            qkv: (qkv, qkv_layout),
            bias: (bias, bias_layout),
            lengths: (lengths, lengths_layout),
            dims,
        };
        let out = match qkv.dtype() {
            DType::F32 => crate::cuda::attention::<f32>(args, "f32")?,
            DType::F16 => crate::cuda::attention::<half::f16>(args, "f16")?,
            DType::BF16 => crate::cuda::attention::<half::bf16>(args, "bf16")?,
            other => {
                candle_core::bail!("fused attention: {other:?} is not a float type it computes in")
            }
        };
        Ok((out, dims.output()))
    }
}

/// The plain computation, row by row: scores `q·k × scale` over the sequence's real keys,
/// softmax (the maximum subtracted), then the weighted sum of the values; in f32.
fn reference<T: WithDType>(qkv: &[T], bias: &[T], lengths: &[u32], dims: Dims) -> CpuStorage {
    let (t, d, h) = (dims.tokens, dims.head_size, dims.hidden());
    let stride = 3 * h;
    let scale = dims.scale();
    // Element `col` of token `token` of the sequence starting at `base`, bias added.
    let at = |base: usize, token: usize, col: usize| {
        (qkv[base + token * stride + col].to_f64() + bias[col].to_f64()) as f32
    };
    let mut out = vec![T::zero(); dims.batch * t * h];
    let mut scores = Vec::with_capacity(t);
    for (seq, &len) in lengths.iter().enumerate() {
        let len = (len as usize).min(t);
        let base = seq * t * stride;
        for head in 0..dims.heads {
            let (q, k, v) = (head * d, h + head * d, 2 * h + head * d);
            for row in 0..t {
                scores.clear();
                for key in 0..len {
                    let dot: f32 = (0..d)
                        .map(|c| at(base, row, q + c) * at(base, key, k + c))
                        .sum();
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
                    let weighted: f32 = scores
                        .iter()
                        .enumerate()
                        .map(|(key, p)| p * at(base, key, v + c))
                        .sum();
                    out[dst + c] = T::from_f64(f64::from(weighted * inv));
                }
            }
        }
    }
    T::to_cpu_storage_owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, values};
    use candle_core::Device;

    /// What the tensor encoder computed before the fused path: the bias added, per-head
    /// score matrices, a large negative bias on padded keys, softmax, context.
    fn unfused(qkv: &Tensor, bias: &Tensor, lengths: &[u32], heads: usize) -> Tensor {
        let (b, t, w) = qkv.dims3().unwrap();
        let d = w / 3 / heads;
        let qkv = qkv.broadcast_add(bias).unwrap();
        let parts = qkv
            .reshape((b, t, 3, heads, d))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let q = (parts.get(0).unwrap().contiguous().unwrap() / (d as f64).sqrt()).unwrap();
        let k = parts.get(1).unwrap().contiguous().unwrap();
        let v = parts.get(2).unwrap().contiguous().unwrap();
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&l| (0..t).map(move |j| if j < l as usize { 0.0 } else { -10_000.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, t), &Device::Cpu).unwrap();
        let scores = q
            .matmul(&k.t().unwrap())
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let shifted = scores
            .broadcast_sub(&scores.max_keepdim(3).unwrap())
            .unwrap();
        let probs = shifted.exp().unwrap();
        let probs = probs.broadcast_div(&probs.sum_keepdim(3).unwrap()).unwrap();
        probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, heads * d))
            .unwrap()
    }

    fn bias(width: usize) -> Tensor {
        values((1, 1, width), 1.0).flatten_all().unwrap()
    }

    #[test]
    fn matches_the_unfused_computation_with_padding() {
        let (b, t, heads, d) = (3, 21, 4, 8);
        let qkv = values((b, t, 3 * heads * d), 0.0);
        let bias = bias(3 * heads * d);
        let lengths = [21u32, 17, 1];
        let lens = Tensor::new(&lengths[..], &Device::Cpu).unwrap();
        let fused = attention(&qkv, &bias, &lens, heads).unwrap();
        assert_eq!(fused.dims(), &[b, t, heads * d]);
        let diff = max_diff(&fused, &unfused(&qkv, &bias, &lengths, heads));
        assert!(diff < 1e-5, "fused vs unfused: {diff}");
        // The bias matters: without it the answer moves.
        let zero = bias.zeros_like().unwrap();
        assert!(max_diff(&attention(&qkv, &zero, &lens, heads).unwrap(), &fused) > 1e-2);
    }

    #[test]
    fn half_precision_stays_close_to_f32() {
        let (b, t, heads, d) = (2, 9, 2, 32);
        let qkv = values((b, t, 3 * heads * d), 0.0);
        let bias = bias(3 * heads * d);
        let lens = Tensor::new(&[9u32, 4], &Device::Cpu).unwrap();
        let full = attention(&qkv, &bias, &lens, heads).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let half = attention(
                &qkv.to_dtype(dtype).unwrap(),
                &bias.to_dtype(dtype).unwrap(),
                &lens,
                heads,
            )
            .unwrap();
            assert_eq!(half.dtype(), dtype);
            let diff = max_diff(&half.to_dtype(DType::F32).unwrap(), &full);
            assert!(diff < 3e-2, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let qkv = values((2, 4, 24), 0.0);
        let bias = bias(24);
        let two = Tensor::new(&[4u32, 4], &Device::Cpu).unwrap();
        let one = Tensor::new(&[4u32], &Device::Cpu).unwrap();
        assert!(
            attention(&qkv, &bias, &one, 2).is_err(),
            "one length for two sequences"
        );
        assert!(
            attention(&qkv, &bias, &two, 5).is_err(),
            "24 is not 3 × 5 heads"
        );
        assert!(attention(&qkv, &bias, &two, 0).is_err(), "no heads");
        let short = bias.narrow(0, 0, 12).unwrap();
        assert!(
            attention(&qkv, &short, &two, 2).is_err(),
            "a bias of 12 for 24 columns"
        );
        let floats = Tensor::new(&[4f32, 4.0], &Device::Cpu).unwrap();
        assert!(
            attention(&qkv, &bias, &floats, 2).is_err(),
            "lengths must be u32"
        );
        let flat = qkv.flatten_all().unwrap();
        assert!(attention(&flat, &bias, &two, 2).is_err(), "qkv must be 3-D");
        let f16 = bias.to_dtype(DType::F16).unwrap();
        assert!(
            attention(&qkv, &f16, &two, 2).is_err(),
            "an f16 bias for f32"
        );
    }

    #[test]
    fn lengths_past_the_tokens_are_clamped() {
        let qkv = values((1, 5, 12), 0.0);
        let bias = bias(12);
        let long = Tensor::new(&[500u32], &Device::Cpu).unwrap();
        let exact = Tensor::new(&[5u32], &Device::Cpu).unwrap();
        let a = attention(&qkv, &bias, &long, 2).unwrap();
        let b = attention(&qkv, &bias, &exact, 2).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}
