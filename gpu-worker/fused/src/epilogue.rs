//! What follows a dense layer's matrix product (computed without its bias), in one pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

use crate::contiguous;

/// The activation after a dense layer (numbered as the CUDA kernel reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · Φ(x)`, with the error function (BERT's `gelu`).
    GeluErf = 0,
    /// The tanh approximation of GELU (`gelu_new`).
    GeluTanh = 1,
    /// `max(x, 0)`.
    Relu = 2,
}

impl Activation {
    fn apply(self, v: f32) -> f32 {
        match self {
            Self::GeluErf => {
                0.5 * v
                    * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
            }
            Self::GeluTanh => {
                let inner = (2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                0.5 * v * (1.0 + inner.tanh())
            }
            Self::Relu => v.max(0.0),
        }
    }
}

/// `act(x + bias)`: `x` is `[.., n]` (rows of a product's output), `bias` `[n]`, same dtype
/// (f32, f16 or bf16), computed in f32.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasAct(act))
}

/// `LayerNorm(x + bias + residual) · gamma + beta` over the last dimension: `x` and
/// `residual` are `[.., n]`, `params` `[3, n]` (the product's bias, then gamma, then beta),
/// all one dtype (f32, f16 or bf16), computed in f32 (mean, then the variance around it).
pub fn bias_residual_norm(
    x: &Tensor,
    residual: &Tensor,
    params: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(
        &residual.contiguous()?,
        &params.contiguous()?,
        &BiasResidualNorm(eps),
    )
}

struct BiasAct(Activation);

struct BiasResidualNorm(f32);

/// Rows and width of `x` (`[.., n]`), checked against a per-column input of `n`.
fn rows_of(x: &Layout, per_column: &[usize], op: &str) -> Result<(usize, usize)> {
    let n = x.shape().dims().last().copied().unwrap_or(0);
    if n == 0 || x.shape().elem_count() == 0 {
        candle_core::bail!("{op}: an empty input");
    }
    if per_column.last() != Some(&n) {
        candle_core::bail!("{op}: parameters of shape {per_column:?} for rows of {n}");
    }
    contiguous(x, op)?;
    Ok((x.shape().elem_count() / n, n))
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "fused-bias-act"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        bias: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        rows_of(xl, bl.shape().dims(), op)?;
        let ((x0, x1), (b0, b1)) = (contiguous(xl, op)?, contiguous(bl, op)?);
        fn run<T: WithDType>(x: &[T], bias: &[T], act: Activation) -> CpuStorage {
            let n = bias.len();
            let out = x
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    T::from_f64(f64::from(
                        act.apply((v.to_f64() + bias[i % n].to_f64()) as f32),
                    ))
                })
                .collect();
            T::to_cpu_storage_owned(out)
        }
        let out = match (x, bias) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => run(&x[x0..x1], &b[b0..b1], self.0),
            (CpuStorage::F16(x), CpuStorage::F16(b)) => run(&x[x0..x1], &b[b0..b1], self.0),
            (CpuStorage::BF16(x), CpuStorage::BF16(b)) => run(&x[x0..x1], &b[b0..b1], self.0),
            _ => candle_core::bail!("{op}: {:?} and {:?} inputs", x.dtype(), bias.dtype()),
        };
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        bias: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let op = self.name();
        let (rows, n) = rows_of(xl, bl.shape().dims(), op)?;
        crate::same_dtype(&[x.dtype(), bias.dtype()], op)?;
        let args = crate::cuda::BiasActArgs {
            x: (x, xl),
            bias: (bias, bl),
            rows,
            n,
            act: self.0 as i32,
        };
        let out = match x.dtype() {
            candle_core::DType::F32 => crate::cuda::bias_act::<f32>(args, "f32")?,
            candle_core::DType::F16 => crate::cuda::bias_act::<half::f16>(args, "f16")?,
            candle_core::DType::BF16 => crate::cuda::bias_act::<half::bf16>(args, "bf16")?,
            other => candle_core::bail!("{op}: {other:?} is not a float type it computes in"),
        };
        Ok((out, xl.shape().clone()))
    }
}

impl CustomOp3 for BiasResidualNorm {
    fn name(&self) -> &'static str {
        "fused-bias-residual-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        residual: &CpuStorage,
        rl: &Layout,
        params: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (_, n) = check_norm(xl, rl, pl, op)?;
        let ((x0, x1), (r0, r1), (p0, p1)) = (
            contiguous(xl, op)?,
            contiguous(rl, op)?,
            contiguous(pl, op)?,
        );
        fn run<T: WithDType>(
            x: &[T],
            residual: &[T],
            params: &[T],
            n: usize,
            eps: f32,
        ) -> CpuStorage {
            let p = |i: usize| params[i].to_f64() as f32;
            let mut out = Vec::with_capacity(x.len());
            let mut row = vec![0f32; n];
            for (xr, rr) in x.chunks_exact(n).zip(residual.chunks_exact(n)) {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = (xr[c].to_f64() + rr[c].to_f64()) as f32 + p(c);
                }
                let mean = row.iter().sum::<f32>() / n as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
                let inv = 1.0 / (var + eps).sqrt();
                out.extend(row.iter().enumerate().map(|(c, v)| {
                    T::from_f64(f64::from((v - mean) * inv * p(n + c) + p(2 * n + c)))
                }));
            }
            T::to_cpu_storage_owned(out)
        }
        let eps = self.0;
        let out = match (x, residual, params) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(p)) => {
                run(&x[x0..x1], &r[r0..r1], &p[p0..p1], n, eps)
            }
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(p)) => {
                run(&x[x0..x1], &r[r0..r1], &p[p0..p1], n, eps)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(p)) => {
                run(&x[x0..x1], &r[r0..r1], &p[p0..p1], n, eps)
            }
            _ => candle_core::bail!(
                "{op}: inputs of mixed or non-float dtypes ({:?})",
                x.dtype()
            ),
        };
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        residual: &candle_core::CudaStorage,
        rl: &Layout,
        params: &candle_core::CudaStorage,
        pl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let op = self.name();
        let (rows, n) = check_norm(xl, rl, pl, op)?;
        crate::same_dtype(&[x.dtype(), residual.dtype(), params.dtype()], op)?;
        let args = crate::cuda::NormArgs {
            x: (x, xl),
            residual: (residual, rl),
            params: (params, pl),
            rows,
            n,
            eps: self.0,
        };
        let out = match x.dtype() {
            candle_core::DType::F32 => crate::cuda::bias_residual_norm::<f32>(args, "f32")?,
            candle_core::DType::F16 => crate::cuda::bias_residual_norm::<half::f16>(args, "f16")?,
            candle_core::DType::BF16 => {
                crate::cuda::bias_residual_norm::<half::bf16>(args, "bf16")?
            }
            other => candle_core::bail!("{op}: {other:?} is not a float type it computes in"),
        };
        Ok((out, xl.shape().clone()))
    }
}

/// Rows and width, with the residual shaped like `x` and the parameters `[3, n]`.
fn check_norm(x: &Layout, residual: &Layout, params: &Layout, op: &str) -> Result<(usize, usize)> {
    let (rows, n) = rows_of(x, params.shape().dims(), op)?;
    if residual.shape() != x.shape() {
        candle_core::bail!(
            "{op}: a residual of {:?} for {:?}",
            residual.shape(),
            x.shape()
        );
    }
    if params.shape().dims() != [3, n] {
        candle_core::bail!("{op}: parameters of {:?}, not [3, {n}]", params.shape());
    }
    contiguous(residual, op)?;
    contiguous(params, op)?;
    Ok((rows, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, values};
    use candle_core::{DType, Device};

    #[test]
    fn bias_act_matches_candles_activations() {
        let x = values((7, 24), 0.0);
        let bias = values((1, 24), 2.0).flatten_all().unwrap();
        let plain = x.broadcast_add(&bias).unwrap();
        for (act, want) in [
            (Activation::GeluErf, plain.gelu_erf().unwrap()),
            (Activation::GeluTanh, plain.gelu().unwrap()),
            (Activation::Relu, plain.relu().unwrap()),
        ] {
            let got = bias_act(&x, &bias, act).unwrap();
            assert_eq!(got.dims(), x.dims());
            let diff = max_diff(&got, &want);
            assert!(diff < 1e-5, "{act:?}: {diff}");
        }
        let half = bias_act(
            &x.to_dtype(DType::F16).unwrap(),
            &bias.to_dtype(DType::F16).unwrap(),
            Activation::GeluErf,
        )
        .unwrap();
        assert_eq!(half.dtype(), DType::F16);
        assert!(
            max_diff(
                &half.to_dtype(DType::F32).unwrap(),
                &plain.gelu_erf().unwrap()
            ) < 2e-2
        );
    }

    #[test]
    fn bias_residual_norm_matches_the_unfused_layer_norm() {
        let (rows, n) = (5, 48);
        let x = values((rows, n), 0.0);
        let residual = values((rows, n), 1.0);
        let params = values((3, n), 4.0);
        let (bias, gamma, beta) = (
            params.get(0).unwrap(),
            params.get(1).unwrap(),
            params.get(2).unwrap(),
        );
        let norm = layer_norm_of(
            &(x.broadcast_add(&bias).unwrap() + &residual).unwrap(),
            &gamma,
            &beta,
            1e-12,
        );
        let got = bias_residual_norm(&x, &residual, &params, 1e-12).unwrap();
        assert_eq!(got.dims(), &[rows, n]);
        let diff = max_diff(&got, &norm);
        assert!(diff < 1e-4, "{diff}");
        // Each row is normalised: mean ≈ beta's mean only if gamma = 1; check with ones.
        let ones = Tensor::stack(
            &[
                bias.clone(),
                bias.ones_like().unwrap(),
                bias.zeros_like().unwrap(),
            ],
            0,
        )
        .unwrap();
        let plain = bias_residual_norm(&x, &residual, &ones, 1e-12).unwrap();
        let means = plain
            .mean_keepdim(1)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(means[0] < 1e-5, "{means:?}");
    }

    /// LayerNorm from tensor operations (mean, centred variance), independent of the op.
    fn layer_norm_of(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(1).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
        let normed = centred
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        normed
            .broadcast_mul(gamma)
            .unwrap()
            .broadcast_add(beta)
            .unwrap()
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let x = values((4, 8), 0.0);
        let short = values((1, 6), 0.0).flatten_all().unwrap();
        assert!(
            bias_act(&x, &short, Activation::Relu).is_err(),
            "a bias of 6 for rows of 8"
        );
        let f16 = values((1, 8), 0.0)
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        assert!(
            bias_act(&x, &f16, Activation::Relu).is_err(),
            "mixed dtypes"
        );
        let params = values((3, 8), 0.0);
        assert!(
            bias_residual_norm(&x, &values((4, 6), 0.0), &params, 1e-5).is_err(),
            "residual shape"
        );
        assert!(
            bias_residual_norm(&x, &x, &values((2, 8), 0.0), 1e-5).is_err(),
            "two parameter rows"
        );
        assert!(
            bias_residual_norm(&x, &x, &values((3, 6), 0.0), 1e-5).is_err(),
            "parameter width"
        );
        let empty = Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(
            bias_residual_norm(&empty, &empty, &params, 1e-5).is_err(),
            "no rows"
        );
    }
}
