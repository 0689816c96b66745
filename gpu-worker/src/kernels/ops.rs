//! The kernels and their parallel entry points. Every entry point takes the [`Isa`] to run
//! on; rows are split over the rayon pool in chunks of [`ROWS`].

use rayon::prelude::*;

use super::isa::Isa;
use super::math::{exp, exp_simd, gelu, gelu_simd};

/// Rows handed to one task of the element-wise passes.
const ROWS: usize = 16;

/// A LayerNorm's scale and shift, and its epsilon.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    /// Scale, one per column.
    pub gamma: Vec<f32>,
    /// Shift, one per column.
    pub beta: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

/// Embedding rows: for each `(token id, position)` of `rows`, `word[id] + position[pos] +
/// token_type0`, then `norm`, into the matching row of `out` (`[rows, hidden]`).
#[allow(clippy::too_many_arguments)]
pub fn embed(
    isa: Isa,
    out: &mut [f32],
    rows: &[(u32, usize)],
    word: &[f32],
    position: &[f32],
    token_type0: &[f32],
    norm: &Norm,
) {
    let h = token_type0.len();
    out.par_chunks_mut(h * ROWS)
        .zip(rows.par_chunks(ROWS))
        .for_each(|(out, rows)| {
            isa.run(Embed {
                out,
                rows,
                word,
                position,
                token_type0,
                norm,
            })
        });
}

/// `out = GELU(input + bias)`, row by row (rows as wide as `bias`).
pub fn bias_gelu(isa: Isa, out: &mut [f32], input: &[f32], bias: &[f32]) {
    let w = bias.len();
    out.par_chunks_mut(w * ROWS)
        .zip(input.par_chunks(w * ROWS))
        .for_each(|(out, input)| isa.run(BiasGelu { out, input, bias }));
}

/// `out = LayerNorm(x + y + bias)`, row by row (rows as wide as `bias`).
pub fn residual_norm(isa: Isa, out: &mut [f32], x: &[f32], y: &[f32], bias: &[f32], norm: &Norm) {
    let h = bias.len();
    out.par_chunks_mut(h * ROWS)
        .zip(x.par_chunks(h * ROWS).zip(y.par_chunks(h * ROWS)))
        .for_each(|(out, (x, y))| {
            isa.run(ResidualNorm {
                out,
                x,
                y,
                bias,
                norm,
            })
        });
}

/// Multi-head self-attention of every sequence over its own tokens, from the fused
/// projection `qkv` (`[tokens, 3 * hidden]`: queries, keys, values; `bias` not yet added).
/// Sequence `s` holds rows `offsets[s]..offsets[s + 1]`. Returns the context `[tokens,
/// hidden]`. One task per (sequence, head).
pub fn attention(isa: Isa, qkv: &[f32], bias: &[f32], offsets: &[usize], heads: usize) -> Vec<f32> {
    let h = bias.len() / 3;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let jobs: Vec<(usize, usize)> = (0..offsets.len().saturating_sub(1))
        .flat_map(|s| (0..heads).map(move |head| (s, head)))
        .collect();
    let parts: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(s, head)| {
            isa.run(Attend {
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

struct Embed<'a> {
    out: &'a mut [f32],
    rows: &'a [(u32, usize)],
    word: &'a [f32],
    position: &'a [f32],
    token_type0: &'a [f32],
    norm: &'a Norm,
}

impl pulp::WithSimd for Embed<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let h = self.token_type0.len();
        for (out, &(id, pos)) in self.out.chunks_exact_mut(h).zip(self.rows) {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[pos * h..][..h];
            for (((o, w), p), t) in out.iter_mut().zip(word).zip(position).zip(self.token_type0) {
                *o = w + p + t;
            }
            layer_norm(out, self.norm);
        }
    }
}

struct BiasGelu<'a> {
    out: &'a mut [f32],
    input: &'a [f32],
    bias: &'a [f32],
}

impl pulp::WithSimd for BiasGelu<'_> {
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

struct ResidualNorm<'a> {
    out: &'a mut [f32],
    x: &'a [f32],
    y: &'a [f32],
    bias: &'a [f32],
    norm: &'a Norm,
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
            layer_norm(out, self.norm);
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
fn layer_norm(row: &mut [f32], norm: &Norm) {
    let n = row.len() as f32;
    let mean = lane_sum(row.iter().copied()) / n;
    let var = lane_sum(row.iter().map(|v| (v - mean) * (v - mean))) / n;
    let inv = 1.0 / (var + norm.eps).sqrt();
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
