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
//! Matrix products run in the model's dtype (tensor cores in f16/bf16); LayerNorm uses
//! candle's fused kernel, which accumulates in f32. Attention is one fused kernel
//! ([`inferencehub_fused::attention`]) reading queries, keys and values straight from the
//! q/k/v projection and skipping padded keys, where the device has a kernel for the head
//! size (CUDA: 32 and 64) and it matched the reference path on this device at load
//! ([`AttentionPath`]); otherwise (the CPU included) the reference path: head split,
//! scores, masked softmax, context as tensor operations.

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

/// How a pass computes self-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// One kernel from the q/k/v projection to the context ([`inferencehub_fused`]).
    Fused,
    /// Tensor operations: the head split (copies), scores with the padding bias, softmax,
    /// context. The plain reference the fused kernel is checked against.
    Reference,
}

/// Largest difference between the fused and the reference attention accepted by the
/// check at load, per dtype (the probe's values are below 0.5 in magnitude).
fn attention_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2e-2,
        DType::BF16 => 6e-2,
        _ => 1e-4,
    }
}

/// The fused attention's probe at load: three sequences of 20 tokens (one 16-key tile and
/// a partial one), two of them padded; the largest difference from the reference path.
fn probe_attention(device: &Device, dtype: DType, heads: usize, d: usize) -> anyhow::Result<f32> {
    let (b, t, h) = (3, 20, heads * d);
    let lengths = [20u32, 17, 3];
    let values: Vec<f32> = (0..b * t * 3 * h)
        .map(|i| 0.5 * ((i as f32) * 0.61).sin() * ((i % 5) as f32 / 5.0 + 0.2))
        .collect();
    let qkv = Tensor::from_vec(values, (b * t, 3 * h), device)?.to_dtype(dtype)?;
    let on_device = Tensor::from_slice(&lengths, b, device)?;
    let fused = fused_attention(&qkv, &on_device, (b, t, heads, d))?;
    let bias = padding_bias(&lengths, t, dtype, device)?;
    let reference = reference_attention(&qkv, bias.as_ref(), (b, t, heads, d), &mut |_| Ok(()))?;
    let diff = (fused.to_dtype(DType::F32)? - reference.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(diff)
}

/// The fused path: `qkv` `[b·t, 3h]` to the context `[b·t, h]`.
/// `lengths` is u32 `[b]`.
fn fused_attention(
    qkv: &Tensor,
    lengths: &Tensor,
    (b, t, heads, d): (usize, usize, usize, usize),
) -> anyhow::Result<Tensor> {
    let qkv = qkv.reshape((b, t, 3 * heads * d))?;
    Ok(inferencehub_fused::attention(&qkv, lengths, heads)?.reshape((b * t, heads * d))?)
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
    attention: AttentionPath,
}

/// The fused path where `device` has a kernel for heads of `d` and it matches the
/// reference path on the load-time probe; otherwise the reference path, with the reason in
/// the log.
fn choose_attention(device: &Device, dtype: DType, heads: usize, d: usize) -> AttentionPath {
    if !inferencehub_fused::has_kernel(device, d) {
        tracing::debug!(
            head_size = d,
            "attention: reference path (no fused kernel for this device and head size)"
        );
        return AttentionPath::Reference;
    }
    match probe_attention(device, dtype, heads, d) {
        Ok(diff) if diff <= attention_tolerance(dtype) => {
            tracing::debug!(
                max_difference = diff,
                "attention: fused kernel, checked against the reference path"
            );
            AttentionPath::Fused
        }
        Ok(diff) => {
            tracing::warn!(
                max_difference = diff,
                ?dtype,
                "attention: the fused kernel differs from the reference path on this device; using the reference path"
            );
            AttentionPath::Reference
        }
        Err(e) => {
            tracing::warn!(error = %e, "attention: the fused kernel failed on this device; using the reference path");
            AttentionPath::Reference
        }
    }
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
            layers.push(Layer {
                qkv: Proj::new(qkv_w, qkv_b)?,
                out: linear(&format!("{p}.attention.output.dense"))?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ff1: linear(&format!("{p}.intermediate.dense"))?,
                ff2: linear(&format!("{p}.output.dense"))?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        // Every token has type 0: its embedding joins the position table once, here.
        let type0 = get("embeddings.token_type_embeddings.weight")?.i(0)?;
        let position = get("embeddings.position_embeddings.weight")?
            .broadcast_add(&type0)?
            .contiguous()?;
        let heads = config.num_attention_heads;
        let attention = choose_attention(device, dtype, heads, config.hidden_size / heads);
        Ok(Self {
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
            attention,
        })
    }

    /// The attention path its passes take.
    pub fn attention(&self) -> AttentionPath {
        self.attention
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
        self.forward_observed(rows, self.attention, &mut |_| Ok(()))
    }

    /// The forward pass with attention computed by `attention`; `mark` is called at the
    /// end of every stage with its name (where a profiler synchronises the device and reads
    /// its clock).
    pub fn forward_observed(
        &self,
        rows: &[&[u32]],
        attention: AttentionPath,
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
        let lengths: Vec<u32> = rows.iter().map(|r| r.len() as u32).collect();
        // What the attention path needs of the lengths, once for every layer.
        let (bias, on_device) = match attention {
            AttentionPath::Reference => {
                (padding_bias(&lengths, t, self.dtype, &self.device)?, None)
            }
            AttentionPath::Fused => (None, Some(Tensor::from_slice(&lengths, b, &self.device)?)),
        };
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
        mark("embeddings")?;
        let dims = (b, t, self.heads, h / self.heads);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, widen(&x)?.as_ref())?;
            mark("qkv projection")?;
            let context = match &on_device {
                Some(lengths) => {
                    let context = fused_attention(&qkv, lengths, dims)?;
                    mark("attention")?;
                    context
                }
                None => reference_attention(&qkv, bias.as_ref(), dims, mark)?,
            };
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
        let out = x.reshape((b, t, h))?.to_dtype(DType::F32)?;
        mark("to f32")?;
        Ok((out, mask))
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

    /// The probe that decides the path at load, run here on the CPU's plain implementation
    /// of the fused contract: it passes where the two paths agree (bf16 is CUDA only: the
    /// CPU has no bf16 matrix product).
    #[test]
    fn the_load_time_probe_passes_where_the_paths_agree() {
        for dtype in [DType::F32, DType::F16] {
            let diff = probe_attention(&Device::Cpu, dtype, 2, 32).unwrap();
            assert!(diff <= attention_tolerance(dtype), "{dtype:?}: {diff}");
            assert!(diff.is_finite());
        }
    }

    #[test]
    fn the_cpu_keeps_the_reference_path() {
        assert_eq!(
            choose_attention(&Device::Cpu, DType::F32, 12, 32),
            AttentionPath::Reference
        );
    }
}
