//! The BERT encoder written with candle tensor operations: runs on CUDA (and on the CPU)
//! in f32, f16 or bf16. The GPU path of every BERT-layout model (BERT, DistilBERT,
//! RoBERTa, the sentence encoders).
//!
//! Two things differ from candle-transformers' `BertModel`, which this replaces on the GPU:
//! - padding is masked with a large *finite* negative bias (-10 000), added after the
//!   scores are scaled. `BertModel` multiplies `(1 - mask)` by `f32::MIN`, which is `-inf`
//!   in f16, and `0 × -inf` is NaN on every real token;
//! - a batch is split into length buckets ([`buckets`]) before padding, so a batch mixing
//!   short and long inputs does not pay for the longest one on every row.
//!
//! Matrix products run in the model's dtype (tensor cores in f16/bf16). Where the device
//! has them (CUDA, heads of 32 or 64) and they matched the reference path on this device at
//! load ([`Kernels`]), everything between the products is a fused kernel of
//! [`inferencehub_fused`]: attention read straight from the q/k/v projection (its bias
//! added as it is read), bias + GELU, and bias + residual + LayerNorm; the products run
//! without a bias. Otherwise (the CPU included) the reference path: candle's operations,
//! the biases folded into the products for large batches, the head split, scores, masked
//! softmax and context as tensor operations, candle's LayerNorm (which accumulates in f32).

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{LayerNorm, Module};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};

use super::weights::encoder_prefix;
use crate::models::tokens::{buckets, pad_batch};

/// Added to the attention scores of padding positions: far below any real score, and
/// representable in f16 (whose largest magnitude is 65 504).
const MASK_BIAS: f64 = -10_000.0;

/// A dense layer `x · Wᵀ + b`, its weight stored transposed (`[in, out]`, contiguous), and
/// again with the bias folded in: `[x | 1 | 0…] · [Wᵀ; b; 0…]`, the input widened by
/// [`FOLD`] columns to keep the inner size a multiple of 8 (tensor cores). candle adds a
/// bias to every row with a strided broadcast kernel that cost more than the matrix product
/// itself on an H200 (measured: see the README); folded, the product does it for free.
/// Small batches skip the fold, where widening the input costs more than it saves.
struct Proj {
    w_t: Tensor,
    b: Tensor,
    folded: Tensor,
}

/// Columns appended to inputs of folded projections: a one, then zeros.
const FOLD: usize = 8;

/// Token rows from which a pass folds its biases into its matrix products.
const FOLD_MIN_ROWS: usize = 1024;

impl Proj {
    fn new(w: Tensor, b: Tensor) -> anyhow::Result<Self> {
        let w_t = w.t()?.contiguous()?;
        let outputs = w_t.dim(1)?;
        let pad = Tensor::zeros((FOLD - 1, outputs), w_t.dtype(), w_t.device())?;
        let folded = Tensor::cat(&[&w_t, &b.unsqueeze(0)?, &pad], 0)?.contiguous()?;
        Ok(Self { w_t, b, folded })
    }

    /// `x` is `[rows, in]`; `widened`, when given, is `[x | 1 | 0…]`.
    fn forward(&self, x: &Tensor, widened: Option<&Tensor>) -> anyhow::Result<Tensor> {
        match widened {
            Some(xw) => Ok(xw.matmul(&self.folded)?),
            None => Ok(x.matmul(&self.w_t)?.broadcast_add(&self.b)?),
        }
    }
}

/// Which kernels a pass runs between its matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// [`inferencehub_fused`]: attention from the q/k/v projection in one kernel, bias +
    /// activation, bias + residual + LayerNorm; the products without their biases.
    Fused,
    /// candle's tensor operations: the plain reference the fused kernels are checked against.
    Reference,
}

/// Largest difference between the fused and the reference passes accepted by the check at
/// load, relative to the largest hidden state (at least 1), per dtype. (MiniLM-L6 in f16 on
/// the CPU: 1.2e-3 of its largest state over a padded batch of 15 sequences; a wrong index
/// or a missing bias moves states by a sizeable fraction of it.)
fn kernels_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2e-2,
        DType::BF16 => 1e-1,
        _ => 1e-3,
    }
}

/// A dense layer's bias and the LayerNorm after it as the fused kernel reads them: `[3, h]`,
/// bias, gamma, beta (the LayerNorm's own tensors, not a second read of the checkpoint).
fn norm_params(bias: &Tensor, norm: &LayerNorm) -> anyhow::Result<Tensor> {
    let beta = norm.bias().context("a BERT LayerNorm has a bias")?;
    Ok(Tensor::stack(&[bias, norm.weight(), beta], 0)?.contiguous()?)
}

/// The fused path: `qkv` `[b·t, 3h]` to the context `[b·t, h]`.
/// `qkv` before its `bias`; `lengths` is u32 `[b]`.
fn fused_attention(
    qkv: &Tensor,
    bias: &Tensor,
    lengths: &Tensor,
    (b, t, heads, d): (usize, usize, usize, usize),
) -> anyhow::Result<Tensor> {
    let qkv = qkv.reshape((b, t, 3 * heads * d))?;
    Ok(inferencehub_fused::attention(&qkv, bias, lengths, heads)?.reshape((b * t, heads * d))?)
}

/// `[b, 1, 1, t]`: 0 on real tokens, [`MASK_BIAS`] on padding; none without padding.
fn padding_bias(
    lengths: &[u32],
    t: usize,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<Option<Tensor>> {
    if lengths.iter().all(|&l| l as usize >= t) {
        return Ok(None);
    }
    let bias: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| {
            (0..t).map(move |j| {
                if j < l as usize {
                    0.0
                } else {
                    MASK_BIAS as f32
                }
            })
        })
        .collect();
    Ok(Some(
        Tensor::from_vec(bias, (lengths.len(), 1, 1, t), device)?.to_dtype(dtype)?,
    ))
}

/// The reference path: `qkv` `[b·t, 3h]` split into heads (copies), scaled scores plus
/// the padding `bias`, softmax, context `[b·t, h]`; `mark` after each step.
fn reference_attention(
    qkv: &Tensor,
    bias: Option<&Tensor>,
    (b, t, heads, d): (usize, usize, usize, usize),
    mark: &mut dyn FnMut(&'static str) -> anyhow::Result<()>,
) -> anyhow::Result<Tensor> {
    let scale = 1.0 / (d as f64).sqrt();
    let qkv = qkv.reshape((b, t, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.i(0)?.contiguous()? * scale)?;
    let k = qkv.i(1)?.contiguous()?;
    let v = qkv.i(2)?.contiguous()?;
    mark("qkv split")?;
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    mark("scores + softmax")?;
    let context = probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b * t, heads * d))?;
    mark("context")?;
    Ok(context)
}

struct Layer {
    qkv: Proj,
    out: Proj,
    ln1: LayerNorm,
    ff1: Proj,
    ff2: Proj,
    ln2: LayerNorm,
    /// `[3, h]` for the fused path: the output projection's bias, LayerNorm 1's gamma, beta.
    norm1: Tensor,
    /// `[3, h]`: the second feed-forward layer's bias, LayerNorm 2's gamma and beta.
    norm2: Tensor,
}

/// A BERT encoder on any candle device and float dtype.
pub struct TensorBert {
    word: Tensor,
    /// Position embeddings with the type-0 segment embedding added.
    position: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    act: HiddenAct,
    max_positions: usize,
    pad_id: u32,
    dtype: DType,
    device: Device,
    eps: f32,
    kernels: Kernels,
}

impl TensorBert {
    /// The encoder from a checkpoint's tensors, cast to `dtype` on `device`.
    pub fn load(
        tensors: &HashMap<String, Tensor>,
        config: &BertConfig,
        dtype: DType,
        device: &Device,
    ) -> anyhow::Result<Self> {
        if !matches!(
            config.hidden_act,
            HiddenAct::Gelu | HiddenAct::GeluApproximate | HiddenAct::Relu
        ) {
            bail!("hidden_act {:?} is not supported", config.hidden_act);
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            bail!("hidden_size must split evenly into attention heads");
        }
        let prefix = encoder_prefix(tensors, config)?;
        let get = |name: &str| -> anyhow::Result<Tensor> {
            Ok(tensors
                .get(&format!("{prefix}{name}"))
                .with_context(|| format!("the checkpoint lacks {prefix}{name}"))?
                .to_device(device)?
                .to_dtype(dtype)?)
        };
        let linear = |name: &str| -> anyhow::Result<Proj> {
            Proj::new(
                get(&format!("{name}.weight"))?,
                get(&format!("{name}.bias"))?,
            )
        };
        let eps = config.layer_norm_eps;
        let norm = |name: &str| -> anyhow::Result<LayerNorm> {
            Ok(LayerNorm::new(
                get(&format!("{name}.weight"))?,
                get(&format!("{name}.bias"))?,
                eps,
            ))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let part = |m: &str, t: &str| get(&format!("{p}.attention.self.{m}.{t}"));
            // Query, key and value as one [3H, H] projection: one matrix product.
            let qkv_w = Tensor::cat(
                &[
                    part("query", "weight")?,
                    part("key", "weight")?,
                    part("value", "weight")?,
                ],
                0,
            )?;
            let qkv_b = Tensor::cat(
                &[
                    part("query", "bias")?,
                    part("key", "bias")?,
                    part("value", "bias")?,
                ],
                0,
            )?;
            let out = linear(&format!("{p}.attention.output.dense"))?;
            let ff2 = linear(&format!("{p}.output.dense"))?;
            let ln1 = norm(&format!("{p}.attention.output.LayerNorm"))?;
            let ln2 = norm(&format!("{p}.output.LayerNorm"))?;
            layers.push(Layer {
                qkv: Proj::new(qkv_w, qkv_b)?,
                norm1: norm_params(&out.b, &ln1)?,
                norm2: norm_params(&ff2.b, &ln2)?,
                out,
                ln1,
                ff1: linear(&format!("{p}.intermediate.dense"))?,
                ff2,
                ln2,
            });
        }
        // Every token has type 0: its embedding joins the position table once, here.
        let type0 = get("embeddings.token_type_embeddings.weight")?.i(0)?;
        let position = get("embeddings.position_embeddings.weight")?
            .broadcast_add(&type0)?
            .contiguous()?;
        let mut bert = Self {
            word: get("embeddings.word_embeddings.weight")?,
            position,
            emb_norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
            hidden: config.hidden_size,
            act: config.hidden_act,
            max_positions: config.max_position_embeddings,
            pad_id: config.pad_token_id as u32,
            dtype,
            device: device.clone(),
            eps: eps as f32,
            kernels: Kernels::Reference,
        };
        bert.kernels = bert.choose_kernels();
        Ok(bert)
    }

    /// The kernels its passes run.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The fused kernels where the device has them for this head size and a probe pass
    /// through them matches the reference path on this device; otherwise the reference
    /// path, with the reason in the log. (CI has no GPU: this is how a kernel that is wrong
    /// on some card or driver costs speed, never answers.)
    fn choose_kernels(&self) -> Kernels {
        let d = self.hidden / self.heads;
        if !inferencehub_fused::has_kernels(&self.device, d) {
            tracing::debug!(
                head_size = d,
                "tensor encoder: reference kernels (no fused kernels for this device and head size)"
            );
            return Kernels::Reference;
        }
        match self.probe() {
            Ok((diff, scale)) if diff <= kernels_tolerance(self.dtype) * scale => {
                tracing::debug!(
                    max_difference = diff,
                    "tensor encoder: fused kernels, checked against the reference path"
                );
                Kernels::Fused
            }
            Ok((diff, scale)) => {
                tracing::warn!(
                    max_difference = diff,
                    largest_state = scale,
                    dtype = ?self.dtype,
                    "tensor encoder: the fused kernels differ from the reference path on this device; using the reference path"
                );
                Kernels::Reference
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "tensor encoder: the fused kernels failed on this device; using the reference path");
                Kernels::Reference
            }
        }
    }

    /// One padded pass of three sequences (70, 20 and 3 tokens: past a 64-key tile of the
    /// tensor-core attention and a 16-key tile of the f32 one, 16-row query blocks full and
    /// partial, two sequences padded) through both paths ([`Self::compare_kernels`]).
    fn probe(&self) -> anyhow::Result<(f32, f32)> {
        let vocab = self.word.dim(0)? as u32;
        let rows: Vec<Vec<u32>> = [70usize, 20, 3]
            .iter()
            .map(|&n| {
                (0..n.min(self.max_positions))
                    .map(|i| (i as u32 * 7919 + n as u32 * 104_729) % vocab)
                    .collect()
            })
            .collect();
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        self.compare_kernels(&rows)
    }

    /// One padded pass of `rows` through the fused and the reference kernels: the largest
    /// difference between their last hidden states over real tokens (infinite where the
    /// fused pass is not finite), and the largest reference state (at least 1).
    pub fn compare_kernels(&self, rows: &[&[u32]]) -> anyhow::Result<(f32, f32)> {
        let states = |kernels| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
            let (hidden, mask) = self.forward_observed(rows, kernels, &mut |_| Ok(()))?;
            let real = mask
                .unsqueeze(2)?
                .broadcast_as(hidden.shape())?
                .flatten_all()?;
            Ok((hidden.flatten_all()?.to_vec1()?, real.to_vec1()?))
        };
        let (fused, real) = states(Kernels::Fused)?;
        let (reference, _) = states(Kernels::Reference)?;
        let mut diff = 0f32;
        let mut scale = 1f32;
        for ((a, b), m) in fused.iter().zip(&reference).zip(&real) {
            if *m > 0.0 {
                diff = diff.max(if a.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                });
                scale = scale.max(b.abs());
            }
        }
        Ok((diff, scale))
    }

    /// The device the encoder runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the encoder computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Last hidden states `[batch, longest, hidden]` (in f32) of one padded batch and its
    /// mask `[batch, longest]` (1 for real tokens).
    pub fn forward_padded(&self, rows: &[&[u32]]) -> anyhow::Result<(Tensor, Tensor)> {
        self.forward_observed(rows, self.kernels, &mut |_| Ok(()))
    }

    /// The forward pass through `kernels`; `mark` is called at the end of every stage with
    /// its name (where a profiler synchronises the device and reads its clock).
    pub fn forward_observed(
        &self,
        rows: &[&[u32]],
        kernels: Kernels,
        mark: &mut dyn FnMut(&'static str) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Tensor, Tensor)> {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if longest == 0 || longest > self.max_positions {
            bail!(
                "sequences must hold 1 to {} tokens, got {longest}",
                self.max_positions
            );
        }
        let (b, t, h) = (rows.len(), longest, self.hidden);
        let (ids, mask) = pad_batch(rows, self.pad_id, &self.device)?;
        let ids = ids.flatten_all()?;
        let mask = mask.to_dtype(DType::F32)?;
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let positions = Tensor::from_vec(positions, b * t, &self.device)?;
        // Tokens as rows of one [b·t, h] matrix: every projection is one large matrix
        // product, not a batch of small ones; both embeddings are gathered row by row, so
        // their sum is a plain element-wise add.
        let mut x =
            (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?;
        x = self.emb_norm.forward(&x)?;
        mark("embeddings")?;
        let lengths: Vec<u32> = rows.iter().map(|r| r.len() as u32).collect();
        let dims = (b, t, self.heads, h / self.heads);
        let x = match kernels {
            Kernels::Fused => self.fused_layers(x, &lengths, dims, mark)?,
            Kernels::Reference => self.reference_layers(x, &lengths, dims, mark)?,
        };
        let out = x.reshape((b, t, h))?.to_dtype(DType::F32)?;
        mark("to f32")?;
        Ok((out, mask))
    }

    /// The encoder layers through the fused kernels: each product without its bias, then
    /// one kernel for what follows it.
    fn fused_layers(
        &self,
        mut x: Tensor,
        lengths: &[u32],
        dims: (usize, usize, usize, usize),
        mark: &mut dyn FnMut(&'static str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Tensor> {
        use inferencehub_fused::{Activation, bias_act, bias_residual_norm};
        let act = match self.act {
            HiddenAct::Gelu => Activation::GeluErf,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            _ => Activation::Relu,
        };
        let lengths = Tensor::from_slice(lengths, dims.0, &self.device)?;
        for layer in &self.layers {
            let qkv = x.matmul(&layer.qkv.w_t)?;
            mark("qkv projection")?;
            let context = fused_attention(&qkv, &layer.qkv.b, &lengths, dims)?;
            mark("attention")?;
            let projected = context.matmul(&layer.out.w_t)?;
            x = bias_residual_norm(&projected, &x, &layer.norm1, self.eps)?;
            mark("output + norm")?;
            let inner = bias_act(&x.matmul(&layer.ff1.w_t)?, &layer.ff1.b, act)?;
            mark("feed-forward 1 + gelu")?;
            let projected = inner.matmul(&layer.ff2.w_t)?;
            x = bias_residual_norm(&projected, &x, &layer.norm2, self.eps)?;
            mark("feed-forward 2 + norm")?;
        }
        Ok(x)
    }

    /// The encoder layers through candle's operations (the reference path).
    fn reference_layers(
        &self,
        mut x: Tensor,
        lengths: &[u32],
        dims: (usize, usize, usize, usize),
        mark: &mut dyn FnMut(&'static str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Tensor> {
        let (b, t) = (dims.0, dims.1);
        let bias = padding_bias(lengths, t, self.dtype, &self.device)?;
        // Folded projections take their input widened by a one and zeros.
        let ones = if b * t >= FOLD_MIN_ROWS {
            let mut col = vec![0f32; FOLD];
            col[0] = 1.0;
            Some(
                Tensor::from_vec(col, (1, FOLD), &self.device)?
                    .to_dtype(self.dtype)?
                    .broadcast_as((b * t, FOLD))?
                    .contiguous()?,
            )
        } else {
            None
        };
        let widen = |x: &Tensor| -> anyhow::Result<Option<Tensor>> {
            Ok(match &ones {
                Some(ones) => Some(Tensor::cat(&[x, ones], 1)?),
                None => None,
            })
        };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, widen(&x)?.as_ref())?;
            mark("qkv projection")?;
            let context = reference_attention(&qkv, bias.as_ref(), dims, mark)?;
            let projected = layer.out.forward(&context, widen(&context)?.as_ref())?;
            x = layer.ln1.forward(&(projected + &x)?)?;
            mark("output + norm")?;
            let inner = layer.ff1.forward(&x, widen(&x)?.as_ref())?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.gelu_erf()?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                _ => inner.relu()?,
            };
            mark("feed-forward 1 + gelu")?;
            let projected = layer.ff2.forward(&inner, widen(&inner)?.as_ref())?;
            x = layer.ln2.forward(&(projected + &x)?)?;
            mark("feed-forward 2 + norm")?;
        }
        Ok(x)
    }

    /// Per input (in input order), `[hidden]` first-token states, computed bucket by bucket.
    pub fn first_token(&self, rows: &[&[u32]]) -> anyhow::Result<Tensor> {
        self.per_bucket(rows, |hidden, _| Ok(hidden.i((.., 0))?.contiguous()?))
    }

    /// Per input, the mean hidden state over its real tokens, bucket by bucket.
    pub fn mean_pooled(&self, rows: &[&[u32]]) -> anyhow::Result<Tensor> {
        self.per_bucket(rows, |hidden, mask| {
            let mask = mask.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            Ok(summed.broadcast_div(&mask.sum(1)?.clamp(1e-9, f64::INFINITY)?)?)
        })
    }

    /// Runs every length bucket of `rows` and puts the pooled rows back in input order.
    fn per_bucket(
        &self,
        rows: &[&[u32]],
        pool: impl Fn(&Tensor, &Tensor) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<Tensor> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let groups = buckets(&lengths);
        let mut pooled = Vec::with_capacity(groups.len());
        let mut order = Vec::with_capacity(rows.len());
        for group in &groups {
            let members: Vec<&[u32]> = group.iter().map(|i| rows[*i]).collect();
            let (hidden, mask) = self.forward_padded(&members)?;
            pooled.push(pool(&hidden, &mask)?);
            order.extend_from_slice(group);
        }
        let all = Tensor::cat(&pooled, 0)?;
        if order.iter().enumerate().all(|(i, o)| i == *o) {
            return Ok(all);
        }
        // Row `order[j]` of the input is row `j` of `all`.
        let mut inverse = vec![0u32; order.len()];
        for (j, i) in order.iter().enumerate() {
            inverse[*i] = j as u32;
        }
        let index = Tensor::from_vec(inverse, order.len(), all.device())?;
        Ok(all.index_select(&index, 0)?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_keeps_the_reference_kernels() {
        assert!(!inferencehub_fused::has_kernels(&Device::Cpu, 32));
    }
}
