//! A BERT encoder written for the CPU: the same arithmetic as transformers' `BertModel`
//! (absolute positions, post-LayerNorm, exact erf GELU), organised for speed.
//!
//! - **No padding.** A batch's sequences are packed one after another: the dense layers,
//!   which hold almost all the FLOPs, see `[total tokens, hidden]`, so a batch mixing a
//!   short and a 128-token input costs its real tokens, not 128 per input. Attention runs
//!   per (sequence, head) on that sequence's own tokens, so no mask is needed.
//! - **Few, large matrix products.** Query, key and value come from one fused projection;
//!   the four products per layer go to candle's `matmul` (gemm, on every core).
//! - **Fused element-wise work.** Bias, residual, LayerNorm and GELU are each one pass
//!   over a matmul's output that writes the next layer's input; attention, softmax and
//!   those passes run on all cores (rayon) and are compiled for AVX2/FMA (AVX-512 where
//!   present) through runtime dispatch, with vectorisable `exp` and `erf`.
//!
//! The CUDA path keeps candle's BERT; this one serves `Device::Cpu`.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Storage, Tensor};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct, PositionEmbeddingType};
use rayon::prelude::*;

use super::tensor_bert::encoder_prefix;

/// One encoder layer's weights: matrices pre-transposed to `[in, out]` for `x · W`.
struct Layer {
    qkv_w: Tensor,
    qkv_b: Vec<f32>,
    out_w: Tensor,
    out_b: Vec<f32>,
    ln1: Norm,
    ff1_w: Tensor,
    ff1_b: Vec<f32>,
    ff2_w: Tensor,
    ff2_b: Vec<f32>,
    ln2: Norm,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// The encoder.
pub struct CpuBert {
    hidden: usize,
    heads: usize,
    eps: f32,
    max_positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: Norm,
    layers: Vec<Layer>,
}

/// Hidden states of a packed batch: `[total tokens, hidden]`, sequence `i` at rows
/// `offsets[i]..offsets[i + 1]`.
pub struct Packed {
    /// Row-major hidden states.
    pub data: Vec<f32>,
    /// Row offsets, one more than there are sequences.
    pub offsets: Vec<usize>,
    /// Hidden size.
    pub hidden: usize,
}

impl Packed {
    /// The rows of sequence `i`.
    pub fn rows(&self, i: usize) -> &[f32] {
        &self.data[self.offsets[i] * self.hidden..self.offsets[i + 1] * self.hidden]
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn vec_of(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// Calls `f` with the f32 contents of a contiguous CPU tensor, without copying.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("the CPU encoder got a tensor on another device");
    };
    let all = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let end = start + layout.shape().elem_count();
    if !layout.is_contiguous() {
        bail!("the CPU encoder needs contiguous tensors");
    }
    Ok(f(&all[start..end]))
}

impl CpuBert {
    /// Whether this encoder computes what `config` describes.
    pub fn supports(config: &BertConfig) -> bool {
        matches!(config.hidden_act, HiddenAct::Gelu)
            && matches!(
                config.position_embedding_type,
                PositionEmbeddingType::Absolute
            )
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
    }

    /// The encoder from a checkpoint's tensors (names with or without a `bert.`-style
    /// prefix, as transformers and sentence-transformers write them).
    pub fn load(tensors: &HashMap<String, Tensor>, config: &BertConfig) -> anyhow::Result<Self> {
        let prefix = encoder_prefix(tensors, config)?;
        let get = |name: &str| -> anyhow::Result<&Tensor> {
            tensors
                .get(&format!("{prefix}{name}"))
                .with_context(|| format!("the checkpoint lacks {prefix}{name}"))
        };
        // x · W with W stored [out, in] by PyTorch: keep W^T [in, out], contiguous.
        let transposed = |name: &str| -> anyhow::Result<Tensor> {
            Ok(get(name)?.to_dtype(DType::F32)?.t()?.contiguous()?)
        };
        let norm = |name: &str| -> anyhow::Result<Norm> {
            Ok(Norm {
                gamma: vec_of(get(&format!("{name}.weight"))?)?,
                beta: vec_of(get(&format!("{name}.bias"))?)?,
            })
        };
        let hidden = config.hidden_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let qkv_w = Tensor::cat(
                &[
                    transposed(&format!("{p}.attention.self.query.weight"))?,
                    transposed(&format!("{p}.attention.self.key.weight"))?,
                    transposed(&format!("{p}.attention.self.value.weight"))?,
                ],
                1,
            )?
            .contiguous()?;
            let mut qkv_b = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                qkv_b.extend(vec_of(get(&format!("{p}.attention.self.{part}.bias"))?)?);
            }
            layers.push(Layer {
                qkv_w,
                qkv_b,
                out_w: transposed(&format!("{p}.attention.output.dense.weight"))?,
                out_b: vec_of(get(&format!("{p}.attention.output.dense.bias"))?)?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ff1_w: transposed(&format!("{p}.intermediate.dense.weight"))?,
                ff1_b: vec_of(get(&format!("{p}.intermediate.dense.bias"))?)?,
                ff2_w: transposed(&format!("{p}.output.dense.weight"))?,
                ff2_b: vec_of(get(&format!("{p}.output.dense.bias"))?)?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_types = vec_of(get("embeddings.token_type_embeddings.weight")?)?;
        Ok(Self {
            hidden,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
            word: vec_of(get("embeddings.word_embeddings.weight")?)?,
            position: vec_of(get("embeddings.position_embeddings.weight")?)?,
            token_type0: token_types[..hidden].to_vec(),
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Last hidden states of `sequences` (token ids, special tokens included), packed.
    pub fn forward(&self, sequences: &[&[u32]]) -> anyhow::Result<Packed> {
        let h = self.hidden;
        let vocab = self.word.len() / h;
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for seq in sequences {
            if seq.is_empty() {
                bail!("empty token sequence");
            }
            if seq.len() > self.max_positions {
                bail!(
                    "{} tokens exceed the model's {} positions",
                    seq.len(),
                    self.max_positions
                );
            }
            if let Some(id) = seq.iter().find(|&&id| id as usize >= vocab) {
                bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            offsets.push(offsets[offsets.len() - 1] + seq.len());
        }
        let tokens = offsets[offsets.len() - 1];
        let mut x = vec![0f32; tokens * h];
        // Embeddings: word + position + token type 0, then LayerNorm; one pass per row.
        let rows: Vec<(u32, usize)> = sequences
            .iter()
            .flat_map(|seq| seq.iter().enumerate().map(|(pos, &id)| (id, pos)))
            .collect();
        x.par_chunks_mut(h * ROWS)
            .zip(rows.par_chunks(ROWS))
            .for_each(|(out, rows)| {
                simd(Embed {
                    bert: self,
                    out,
                    rows,
                })
            });
        for layer in &self.layers {
            x = self.layer(layer, x, &offsets)?;
        }
        Ok(Packed {
            data: x,
            offsets,
            hidden: h,
        })
    }

    fn layer(&self, layer: &Layer, x: Vec<f32>, offsets: &[usize]) -> anyhow::Result<Vec<f32>> {
        let h = self.hidden;
        let tokens = x.len() / h;
        let x = Tensor::from_vec(x, (tokens, h), &Device::Cpu)?;
        let qkv = x.matmul(&layer.qkv_w)?;
        let context = with_slice(&qkv, |qkv| self.attention(qkv, &layer.qkv_b, offsets))?;
        let context = Tensor::from_vec(context, (tokens, h), &Device::Cpu)?;
        let attended = context.matmul(&layer.out_w)?;
        // x1 = LayerNorm(x + attended + bias)
        let x1 = with_slice(&x, |x| {
            with_slice(&attended, |a| {
                self.residual_norm(x, a, &layer.out_b, &layer.ln1)
            })
        })??;
        let x1 = Tensor::from_vec(x1, (tokens, h), &Device::Cpu)?;
        let inner = x1.matmul(&layer.ff1_w)?;
        let width = layer.ff1_b.len();
        let activated = with_slice(&inner, |inner| {
            let mut out = vec![0f32; inner.len()];
            out.par_chunks_mut(width * ROWS)
                .zip(inner.par_chunks(width * ROWS))
                .for_each(|(out, input)| {
                    simd(Gelu {
                        out,
                        input,
                        bias: &layer.ff1_b,
                    })
                });
            out
        })?;
        let activated = Tensor::from_vec(activated, (tokens, width), &Device::Cpu)?;
        let projected = activated.matmul(&layer.ff2_w)?;
        with_slice(&x1, |x1| {
            with_slice(&projected, |p| {
                self.residual_norm(x1, p, &layer.ff2_b, &layer.ln2)
            })
        })?
    }

    /// `LayerNorm(x + y + bias)` row by row, into a new buffer.
    fn residual_norm(&self, x: &[f32], y: &[f32], bias: &[f32], norm: &Norm) -> Vec<f32> {
        let h = self.hidden;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * ROWS)
            .zip(x.par_chunks(h * ROWS).zip(y.par_chunks(h * ROWS)))
            .for_each(|(out, (x, y))| {
                simd(ResidualNorm {
                    out,
                    x,
                    y,
                    bias,
                    norm,
                    eps: self.eps,
                })
            });
        out
    }

    /// Multi-head self-attention of every sequence over its own tokens, from the fused
    /// projection `qkv` (`[tokens, 3 * hidden]`, biases not yet added).
    fn attention(&self, qkv: &[f32], bias: &[f32], offsets: &[usize]) -> Vec<f32> {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let jobs: Vec<(usize, usize)> = (0..offsets.len() - 1)
            .flat_map(|s| (0..self.heads).map(move |head| (s, head)))
            .collect();
        let parts: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(s, head)| {
                simd(Attend {
                    qkv,
                    bias,
                    h,
                    d,
                    head,
                    rows: offsets[s]..offsets[s + 1],
                    scale,
                })
            })
            .collect();
        let mut context = vec![0f32; qkv.len() / 3];
        for (&(s, head), part) in jobs.iter().zip(&parts) {
            for (i, row) in part.chunks_exact(d).enumerate() {
                let at = (offsets[s] + i) * h + head * d;
                context[at..at + d].copy_from_slice(row);
            }
        }
        context
    }
}

/// Rows handed to one task of the element-wise passes.
const ROWS: usize = 16;

/// Runs `op` compiled for the best instruction set this CPU has (AVX-512, AVX2 + FMA, or
/// baseline), chosen at run time, so its loops vectorise. Each kernel is a struct whose
/// `with_simd` is `#[inline(always)]`, as is everything its loops call, so the whole body
/// is compiled inside pulp's target-feature function.
#[inline(always)]
fn simd<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

/// Embeddings of `rows` (token id, position): word + position + token type 0, LayerNorm.
struct Embed<'a> {
    bert: &'a CpuBert,
    out: &'a mut [f32],
    rows: &'a [(u32, usize)],
}

impl pulp::WithSimd for Embed<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let b = self.bert;
        let h = b.hidden;
        for (out, &(id, pos)) in self.out.chunks_exact_mut(h).zip(self.rows) {
            let word = &b.word[id as usize * h..][..h];
            let position = &b.position[pos * h..][..h];
            for (((o, w), p), t) in out.iter_mut().zip(word).zip(position).zip(&b.token_type0) {
                *o = w + p + t;
            }
            layer_norm(out, &b.emb_ln, b.eps);
        }
    }
}

/// `out = GELU(input + bias)`, row by row.
struct Gelu<'a> {
    out: &'a mut [f32],
    input: &'a [f32],
    bias: &'a [f32],
}

impl pulp::WithSimd for Gelu<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let w = self.bias.len();
        let (bias, bias_tail) = S::as_simd_f32s(self.bias);
        for (out, row) in self.out.chunks_exact_mut(w).zip(self.input.chunks_exact(w)) {
            let (out, out_tail) = S::as_mut_simd_f32s(out);
            let (row, row_tail) = S::as_simd_f32s(row);
            for ((o, &v), &b) in out.iter_mut().zip(row).zip(bias) {
                *o = gelu_simd(simd, simd.add_f32s(v, b));
            }
            for ((o, &v), &b) in out_tail.iter_mut().zip(row_tail).zip(bias_tail) {
                *o = gelu(v + b);
            }
        }
    }
}

/// `out = LayerNorm(x + y + bias)`, row by row.
struct ResidualNorm<'a> {
    out: &'a mut [f32],
    x: &'a [f32],
    y: &'a [f32],
    bias: &'a [f32],
    norm: &'a Norm,
    eps: f32,
}

impl pulp::WithSimd for ResidualNorm<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let h = self.bias.len();
        let rows = self
            .out
            .chunks_exact_mut(h)
            .zip(self.x.chunks_exact(h).zip(self.y.chunks_exact(h)));
        for (out, (x, y)) in rows {
            for (((o, &a), &b), &c) in out.iter_mut().zip(x).zip(y).zip(self.bias) {
                *o = a + b + c;
            }
            layer_norm(out, self.norm, self.eps);
        }
    }
}

/// One head of one sequence: softmax(q kᵀ · scale) v over the sequence's `rows`.
struct Attend<'a> {
    qkv: &'a [f32],
    bias: &'a [f32],
    h: usize,
    d: usize,
    head: usize,
    rows: std::ops::Range<usize>,
    scale: f32,
}

impl pulp::WithSimd for Attend<'_> {
    type Output = Vec<f32>;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Vec<f32> {
        let Attend {
            qkv,
            bias,
            h,
            d,
            head,
            rows,
            scale,
        } = self;
        let lanes = S::F32_LANES;
        let start = rows.start;
        let n = rows.len();
        // Keys and score rows padded to whole vectors; the padding scores are never used.
        let np = n.div_ceil(lanes) * lanes;
        let dp = d.div_ceil(lanes) * lanes;
        let stride = 3 * h;
        let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
        // This head's queries (scaled) [n][d], keys transposed [d][np] and values
        // [n][dp], biases added, each contiguous for the blocked products below.
        let mut q = vec![0f32; n * d];
        let mut kt = vec![0f32; d * np];
        let mut v = vec![0f32; n * dp];
        for j in 0..n {
            let row = &qkv[(start + j) * stride..][..stride];
            for c in 0..d {
                q[j * d + c] = (row[qo + c] + bias[qo + c]) * scale;
                kt[c * np + j] = row[ko + c] + bias[ko + c];
                v[j * dp + c] = row[vo + c] + bias[vo + c];
            }
        }
        let mut scores = vec![0f32; n * np];
        matmul(simd, (&q, d), (&kt, np), n, d, (&mut scores, np));
        for row in scores.chunks_exact_mut(np) {
            softmax(simd, &mut row[..n]);
        }
        let mut out = vec![0f32; n * dp];
        matmul(simd, (&scores, np), (&v, dp), n, n, (&mut out, dp));
        if dp == d {
            return out;
        }
        out.chunks_exact(dp)
            .flat_map(|r| &r[..d])
            .copied()
            .collect()
    }
}

/// `c = a · b` for row-major `a` [m × k] and `b` [k × columns of c], each given with its
/// row stride; `c`'s width is a whole number of vectors. Register blocks of 4 rows by 2
/// vectors keep eight independent FMA chains in flight.
#[inline(always)]
fn matmul<S: pulp::Simd>(
    simd: S,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    m: usize,
    k: usize,
    (c, ldc): (&mut [f32], usize),
) {
    let lanes = S::F32_LANES;
    let zero = simd.splat_f32s(0.0);
    for i in (0..m).step_by(4) {
        // Rows past the end repeat the last one; they are never stored.
        let r = [
            i,
            (i + 1).min(m - 1),
            (i + 2).min(m - 1),
            (i + 3).min(m - 1),
        ];
        let rows = (m - i).min(4);
        let mut j = 0;
        while j < ldc {
            let wide = j + 2 * lanes <= ldc;
            let width = if wide { 2 * lanes } else { lanes };
            let mut acc = [[zero; 2]; 4];
            if wide {
                for kk in 0..k {
                    let (bv, _) = S::as_simd_f32s(&b[kk * ldb + j..][..width]);
                    let (b0, b1) = (bv[0], bv[1]);
                    for (acc, &row) in acc.iter_mut().zip(&r) {
                        let av = simd.splat_f32s(a[row * lda + kk]);
                        acc[0] = simd.mul_add_f32s(av, b0, acc[0]);
                        acc[1] = simd.mul_add_f32s(av, b1, acc[1]);
                    }
                }
            } else {
                for kk in 0..k {
                    let (bv, _) = S::as_simd_f32s(&b[kk * ldb + j..][..width]);
                    let b0 = bv[0];
                    for (acc, &row) in acc.iter_mut().zip(&r) {
                        let av = simd.splat_f32s(a[row * lda + kk]);
                        acc[0] = simd.mul_add_f32s(av, b0, acc[0]);
                    }
                }
            }
            for (rr, acc) in acc.iter().enumerate().take(rows) {
                let (cv, _) = S::as_mut_simd_f32s(&mut c[(i + rr) * ldc + j..][..width]);
                cv.copy_from_slice(&acc[..width / lanes]);
            }
            j += width;
        }
    }
}

/// Sum in 16 independent lanes: a strict left-to-right float sum cannot vectorise.
#[inline(always)]
fn lane_sum(xs: impl ExactSizeIterator<Item = f32> + Clone) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = xs;
    let full = it.len() / 16;
    for _ in 0..full {
        for a in acc.iter_mut() {
            *a += it.next().unwrap_or(0.0);
        }
    }
    acc.iter().sum::<f32>() + it.sum::<f32>()
}

#[inline(always)]
fn layer_norm(row: &mut [f32], norm: &Norm, eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row.iter().copied()) / n;
    let var = lane_sum(row.iter().map(|v| (v - mean) * (v - mean))) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

#[inline(always)]
fn softmax<S: pulp::Simd>(simd: S, row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let (head, tail) = S::as_mut_simd_f32s(row);
    let shift = simd.splat_f32s(max);
    for v in head.iter_mut() {
        *v = exp_simd(simd, simd.sub_f32s(*v, shift));
    }
    for v in tail.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lane_sum(row.iter().copied());
    row.iter_mut().for_each(|v| *v *= inv);
}

/// e^r on |r| ≤ ln2/2: Taylor coefficients, highest degree first (Horner order).
const EXP_POLY: [f32; 7] = [
    0.001_388_889,
    0.008_333_334,
    0.041_666_668,
    0.166_666_67,
    0.5,
    1.0,
    1.0,
];
/// ln 2 split in two so n·ln2 is exact enough.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Round to nearest by adding and removing 1.5 · 2^23 (vectorises, unlike `round`).
const ROUND_MAGIC: f32 = 12_582_912.0;
/// n + 127 + 2^23 holds n + 127 in its mantissa bits.
const EXPONENT_MAGIC: f32 = 127.0 + 8_388_608.0;
/// erf (Abramowitz & Stegun 7.1.26): t = 1 / (1 + P·|x|), then a degree-5 polynomial in t
/// (coefficients highest degree first, times t) times e^(-x²).
const ERF_P: f32 = 0.327_591_1;
const ERF_POLY: [f32; 5] = [
    1.061_405_4,
    -1.453_152_1,
    1.421_413_7,
    -0.284_496_74,
    0.254_829_6,
];

/// `e^x` within about 1e-7 relative for x in [-87, 88] (clamped outside), branch-free:
/// x = n·ln2 + r, e^r by a degree-6 polynomial on |r| ≤ ln2/2, 2^n from the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    // 2^n from the exponent bits (bit operations only, so it vectorises, unlike a
    // float-to-int cast).
    let bits = ((n + EXPONENT_MAGIC).to_bits() & 0x007f_ffff) << 23;
    p * f32::from_bits(bits)
}

/// erf(x) within 1e-6 in f32 (Abramowitz & Stegun 7.1.26: 1.5e-7, plus rounding), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * ERF_POLY[1..].iter().fold(ERF_POLY[0], |p, &c| p * t + c);
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact (erf) form transformers' `gelu` uses.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// [`exp`], a vector at a time.
#[inline(always)]
fn exp_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
    let x = s.min_f32s(s.max_f32s(x, s.splat_f32s(-87.3)), s.splat_f32s(88.3));
    let magic = s.splat_f32s(ROUND_MAGIC);
    let n = s.sub_f32s(
        s.mul_add_f32s(x, s.splat_f32s(std::f32::consts::LOG2_E), magic),
        magic,
    );
    let r = s.negate_mul_add_f32s(n, s.splat_f32s(LN2_HI), x);
    let r = s.negate_mul_add_f32s(n, s.splat_f32s(LN2_LO), r);
    let mut p = s.splat_f32s(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = s.mul_add_f32s(p, r, s.splat_f32s(c));
    }
    let biased: S::u32s = pulp::cast(s.add_f32s(n, s.splat_f32s(EXPONENT_MAGIC)));
    let bits = s.wrapping_dyn_shl_u32s(
        s.and_u32s(biased, s.splat_u32s(0x007f_ffff)),
        s.splat_u32s(23),
    );
    s.mul_f32s(p, pulp::cast(bits))
}

/// [`gelu`], a vector at a time.
#[inline(always)]
fn gelu_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
    let z = s.mul_f32s(x, s.splat_f32s(std::f32::consts::FRAC_1_SQRT_2));
    let a = s.abs_f32s(z);
    let one = s.splat_f32s(1.0);
    let t = s.div_f32s(one, s.mul_add_f32s(a, s.splat_f32s(ERF_P), one));
    let mut poly = s.splat_f32s(ERF_POLY[0]);
    for &c in &ERF_POLY[1..] {
        poly = s.mul_add_f32s(poly, t, s.splat_f32s(c));
    }
    poly = s.mul_f32s(poly, t);
    let e = exp_simd(s, s.negate_mul_add_f32s(a, a, s.splat_f32s(0.0)));
    let magnitude = s.negate_mul_add_f32s(poly, e, one);
    // erf(z) carries z's sign.
    let sign = s.and_u32s(pulp::cast(z), s.splat_u32s(0x8000_0000));
    let erf: S::f32s = pulp::cast(s.xor_u32s(pulp::cast(magnitude), sign));
    s.mul_f32s(s.mul_f32s(x, s.splat_f32s(0.5)), s.add_f32s(one, erf))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Both(Vec<f32>);

    impl pulp::WithSimd for Both {
        type Output = (Vec<f32>, Vec<f32>);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
            let mut g = self.0.clone();
            let mut e = self.0;
            for v in S::as_mut_simd_f32s(&mut g).0 {
                *v = gelu_simd(simd, *v);
            }
            for v in S::as_mut_simd_f32s(&mut e).0 {
                *v = exp_simd(simd, *v);
            }
            (g, e)
        }
    }

    #[test]
    fn the_vector_forms_match_the_scalar_ones() {
        let xs: Vec<f32> = (-2048..2048).map(|i| i as f32 / 64.0).collect();
        let (g, e) = simd(Both(xs.clone()));
        for ((x, g), e) in xs.iter().zip(g).zip(e) {
            assert!((g - gelu(*x)).abs() <= 1e-6 * x.abs().max(1.0), "gelu({x})");
            assert!((e - exp(*x)).abs() <= 1e-6 * exp(*x), "exp({x})");
        }
    }

    #[test]
    fn exp_and_erf_match_the_library() {
        for i in -2000..=2000 {
            let x = i as f32 / 50.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "exp({x}) = {got}, want {want}"
            );
        }
        for i in -300..=300 {
            let x = i as f64 / 100.0;
            let want = erf_reference(x);
            assert!((erf(x as f32) as f64 - want).abs() < 1e-6, "erf({x})");
        }
        // Beyond 3, erf is within erfc(3) = 2.2e-5 of ±1.
        for x in [3.5f32, 5.0, 9.0, 40.0] {
            assert!((erf(x) - 1.0).abs() < 2.3e-5 && (erf(-x) + 1.0).abs() < 2.3e-5);
        }
        assert!(exp(-200.0) < 1e-37);
    }

    fn erf_reference(x: f64) -> f64 {
        // Maclaurin series: exact to ~1e-12 in f64 for |x| <= 3.
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()).clamp(-1.0, 1.0)
    }
}
