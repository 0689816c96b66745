//! The kernels and their parallel entry points. Every entry point takes the [`Isa`] to run
//! on; rows are split over the rayon pool in chunks of [`ROWS`].

use rayon::prelude::*;

use super::gemm::{Epilogue, MAX_PANEL, Panels, load, product, save};
use super::isa::Isa;
use super::math::exp2_nonpositive_simd;

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

/// LayerNorm of every row of `rows` (rows as wide as `norm`), in place. A few rows run on
/// the calling thread.
pub fn layer_norm_rows(isa: Isa, rows: &mut [f32], norm: &Norm) {
    let h = norm.gamma.len();
    if rows.len() <= h * ROWS {
        isa.run(NormRows { rows, norm });
    } else {
        rows.par_chunks_mut(h * ROWS)
            .for_each(|rows| isa.run(NormRows { rows, norm }));
    }
}

/// Multi-head self-attention of every sequence over its own tokens, from the fused
/// projection `qkv` (`[tokens, 3 * hidden]`: queries, keys, values, biases added), into
/// `context` (`[tokens, hidden]`). Sequence `s` holds rows `offsets[s]..offsets[s + 1]`.
/// One task per (sequence, head), each writing its head's columns of its sequence's rows;
/// a sequence short enough for one panel of `isa`'s half width runs on it (AVX2 under
/// AVX-512, below).
pub fn attention(isa: Isa, context: &mut [f32], qkv: &[f32], offsets: &[usize], heads: usize) {
    let tokens = offsets.last().copied().unwrap_or(0);
    let h = context.len() / tokens.max(1);
    assert_eq!(
        qkv.len(),
        3 * context.len(),
        "qkv is not [tokens, 3 * hidden]"
    );
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut jobs: Vec<Attend<'_, '_>> = Vec::with_capacity(offsets.len() * heads);
    let mut rest = &mut context[..tokens * h];
    for bounds in offsets.windows(2) {
        let (sequence, after) = rest.split_at_mut((bounds[1] - bounds[0]) * h);
        rest = after;
        let first = jobs.len();
        jobs.extend((0..heads).map(|head| Attend {
            qkv,
            h,
            d,
            head,
            rows: bounds[0]..bounds[1],
            scale,
            out: Vec::with_capacity(bounds[1] - bounds[0]),
        }));
        for row in sequence.chunks_exact_mut(h) {
            for (job, piece) in jobs[first..].iter_mut().zip(row.chunks_exact_mut(d)) {
                job.out.push(piece);
            }
        }
    }
    // A sequence whose keys fit one panel of the half-width instruction set (16 on AVX2)
    // runs on it: an AVX-512 panel is 32 keys wide, so a 12-token sequence's scores
    // would fill 12 of its columns against 12 of AVX2's 16. One layer over 32 sequences
    // of 12 tokens (`make bench-kernels`) ran 11–14 % slower on AVX-512 than on AVX2 on a
    // Zen 5 EPYC, 27 % on an Intel Xeon; now the two are level.
    let narrow = isa.half_width();
    let short = 2 * narrow.lanes();
    jobs.into_par_iter().for_each(|job| {
        if job.rows.len() <= short {
            narrow.run(job);
        } else {
            isa.run(job);
        }
    });
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
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let h = self.token_type0.len();
        for (out, &(id, pos)) in self.out.chunks_exact_mut(h).zip(self.rows) {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[pos * h..][..h];
            for (((o, w), p), t) in out.iter_mut().zip(word).zip(position).zip(self.token_type0) {
                *o = w + p + t;
            }
            layer_norm(simd, out, self.norm);
        }
    }
}

struct NormRows<'a> {
    rows: &'a mut [f32],
    norm: &'a Norm,
}

impl pulp::WithSimd for NormRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let h = self.norm.gamma.len();
        for row in self.rows.chunks_exact_mut(h) {
            layer_norm(simd, row, self.norm);
        }
    }
}

/// One head of one sequence: softmax(q kᵀ · scale) v over the sequence's `rows`, into
/// `out` (the head's `d` columns of each of those rows of the context).
struct Attend<'a, 'o> {
    qkv: &'a [f32],
    h: usize,
    d: usize,
    head: usize,
    rows: std::ops::Range<usize>,
    scale: f32,
    out: Vec<&'o mut [f32]>,
}

thread_local! {
    /// Each thread's attention buffers (packed keys and values, scores), kept
    /// between tasks.
    static ATTEND_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl pulp::WithSimd for Attend<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Attend {
            qkv,
            h,
            d,
            head,
            rows,
            scale,
            mut out,
        } = self;
        let lanes = S::F32_LANES;
        let panel = 2 * lanes;
        let n = rows.len();
        if n == 0 {
            return;
        }
        let stride = 3 * h;
        let token = |j: usize| &qkv[(rows.start + j) * stride..][..stride];
        let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
        // Both products run on the dense layers' tiles: the queries read in place as rows
        // [n, d] of the projection; the keys as the panels of Kᵀ ([d, n]); the scores as
        // rows [n, n], each padded to whole vectors so the softmax runs on vectors only;
        // the values as the panels of V ([n, d]). The scale 1/√d is applied inside the
        // softmax's exponent, and its normalisation to the output rows.
        let key_panels = n.div_ceil(panel);
        let value_panels = d.div_ceil(panel);
        let row = n.next_multiple_of(lanes);
        let mut scratch = ATTEND_SCRATCH.with(|c| c.take());
        let sizes = [
            key_panels * d * panel,
            value_panels * n * panel,
            key_panels.max(value_panels) * panel,
            n,
            n * row,
        ];
        scratch.resize(sizes.iter().sum(), 0.0);
        let (kt, rest) = scratch.split_at_mut(sizes[0]);
        let (vp, rest) = rest.split_at_mut(sizes[1]);
        let (zeros, rest) = rest.split_at_mut(sizes[2]);
        let (inverse_sums, scores) = rest.split_at_mut(sizes[3]);
        // Kᵀ's panels, the last panel's columns past `n` zero: eight keys by eight columns
        // at a time, each block transposed in registers, where the instruction set has the
        // shuffles (AVX; the blocks past `n` are written as zeros); else the last panel
        // zeroed, then a panel's keys sliced once and its rows filled one column of Kᵀ at
        // a time (a key at a time, or with each element's row sliced anew, ran 5–10 %
        // slower).
        let keys_at = rows.start * stride + ko;
        if !fill_keys_by_blocks(simd, kt, &qkv[keys_at..], stride, d, n, panel) {
            if !n.is_multiple_of(panel) {
                kt[(key_panels - 1) * d * panel..].fill(0.0);
            }
            let mut keys = [&qkv[..0]; MAX_PANEL];
            for (p, kt) in kt.chunks_exact_mut(d * panel).enumerate() {
                let keys = &mut keys[..panel.min(n - p * panel)];
                for (jj, key) in keys.iter_mut().enumerate() {
                    *key = &token(p * panel + jj)[ko..ko + d];
                }
                for (c, dst) in kt.chunks_exact_mut(panel).enumerate() {
                    for (dst, key) in dst.iter_mut().zip(keys.iter()) {
                        *dst = key[c];
                    }
                }
            }
        }
        // V's panels, a panel row at a time as two vectors (a part panel's missing columns
        // loaded as zeros, as the tiles' residual is).
        for (p, vp) in vp.chunks_exact_mut(n * panel).enumerate() {
            let cols = p * panel..((p + 1) * panel).min(d);
            for (j, dst) in vp.chunks_exact_mut(panel).enumerate() {
                save::<S>(dst, load::<S>(&token(j)[vo + cols.start..vo + cols.end]));
            }
        }
        zeros.fill(0.0);
        let keys = Panels {
            panel,
            k: d,
            n,
            data: kt,
            bias: zeros,
            streamed: false,
        };
        let mut score_rows: Vec<&mut [f32]> =
            scores.chunks_exact_mut(row).map(|r| &mut r[..n]).collect();
        let queries = &qkv[rows.start * stride + qo..][..(n - 1) * stride + d];
        simd.vectorize(Multiply {
            rows: &mut score_rows,
            a: queries,
            lda: stride,
            w: keys,
            epilogue: Epilogue::Bias,
        });
        drop(score_rows);
        for (row, inverse) in scores.chunks_exact_mut(row).zip(inverse_sums.iter_mut()) {
            row[n..].fill(f32::NEG_INFINITY);
            *inverse = 1.0 / softmax_unnormalised(simd, row, scale);
        }
        let values = Panels {
            panel,
            k: n,
            n: d,
            data: vp,
            bias: zeros,
            streamed: false,
        };
        simd.vectorize(Multiply {
            rows: &mut out,
            a: scores,
            lda: row,
            w: values,
            epilogue: Epilogue::BiasScaleRows(inverse_sums),
        });
        ATTEND_SCRATCH.with(|c| c.replace(scratch));
    }
}

/// One of the attention's two products, over every panel of `w`, compiled as a vectorised
/// function of its own (both products share it) rather than inlined into [`Attend`]'s.
/// Inlined there, the register allocator kept a value of the code around the queries'
/// product in a vector register through its tiles' loop and spilled one of the AVX2 tile's
/// 12 accumulators to the stack instead, stored and loaded again every step: one layer's
/// attention on a Zen 3 EPYC, best of four runs each way, 1 × 128 tokens 409 → 315 µs,
/// 32 × 128 10.8 → 8.7 ms (`IHUB_BENCH_KERNELS=attention make bench-kernels`).
struct Multiply<'a, 'r> {
    rows: &'r mut [&'a mut [f32]],
    a: &'r [f32],
    lda: usize,
    w: Panels<'r>,
    epilogue: Epilogue<'r>,
}

impl pulp::WithSimd for Multiply<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        product(
            simd,
            self.rows,
            0,
            0..self.w.count(),
            self.a,
            self.lda,
            self.w,
            self.epilogue,
        );
    }
}

/// `Σ f(x)` over `xs` in vector lanes (four accumulators), then across the lanes; `f` is
/// `x` itself or, with `centre` set, `(x - centre)²`. (Summing scalars left to right does
/// not vectorise.)
#[inline(always)]
fn lane_sum<S: pulp::Simd>(simd: S, xs: &[f32], centre: Option<f32>) -> f32 {
    let (head, tail) = S::as_simd_f32s(xs);
    let zero = simd.splat_f32s(0.0);
    let c = simd.splat_f32s(centre.unwrap_or(0.0));
    let mut acc = [zero; 4];
    let (quads, rest) = head.as_chunks::<4>();
    // Not a closure per element: one would be compiled outside pulp's target features.
    if centre.is_some() {
        for quad in quads {
            for (a, &v) in acc.iter_mut().zip(quad) {
                let d = simd.sub_f32s(v, c);
                *a = simd.mul_add_f32s(d, d, *a);
            }
        }
        for (a, &v) in acc.iter_mut().zip(rest) {
            let d = simd.sub_f32s(v, c);
            *a = simd.mul_add_f32s(d, d, *a);
        }
    } else {
        for quad in quads {
            for (a, &v) in acc.iter_mut().zip(quad) {
                *a = simd.add_f32s(*a, v);
            }
        }
        for (a, &v) in acc.iter_mut().zip(rest) {
            *a = simd.add_f32s(*a, v);
        }
    }
    let lanes = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    let mut rest = 0f32;
    for &v in tail {
        rest += match centre {
            Some(c) => (v - c) * (v - c),
            None => v,
        };
    }
    simd.reduce_sum_f32s(lanes) + rest
}

#[inline(always)]
fn layer_norm<S: pulp::Simd>(simd: S, row: &mut [f32], norm: &Norm) {
    let n = row.len() as f32;
    let mean = lane_sum(simd, row, None) / n;
    let var = lane_sum(simd, row, Some(mean)) / n;
    let inv = 1.0 / (var + norm.eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// `row[i] = e^((row[i] - max) · scale)`, returning their sum (the caller divides by it
/// later); `row` is whole vectors long (padding set to -∞ gives 0, or as good as: 2^-126).
///
/// The exponent is taken in base 2, `2^((row[i] - max) · scale · log2 e)` from one
/// multiply-add, by [`exp2_nonpositive_simd`]; two vectors a step. A Zen 3 EPYC, one layer's
/// attention at 8 × 128, one thread: the softmax was 20.6 % of it with
/// [`exp_simd`](super::math::exp_simd) (about 45 instructions a vector, 14 of them register
/// moves among its constants), 14–16 % so (24 a vector); the same error against the f64
/// reference (9.5e-7, was 1.1e-6).
#[inline(always)]
fn softmax_unnormalised<S: pulp::Simd>(simd: S, row: &mut [f32], scale: f32) -> f32 {
    let (row, tail) = S::as_mut_simd_f32s(row);
    debug_assert!(tail.is_empty(), "score row not whole vectors");
    let mut lanes = simd.splat_f32s(f32::NEG_INFINITY);
    for &v in row.iter() {
        lanes = simd.max_f32s(lanes, v);
    }
    let max = simd.reduce_max_f32s(lanes);
    // (x - max) · scale · log2 e as one multiply-add.
    let factor = simd.splat_f32s(scale * std::f32::consts::LOG2_E);
    let shift = simd.splat_f32s(-max * scale * std::f32::consts::LOG2_E);
    let mut sums = [simd.splat_f32s(0.0); 2];
    let (pairs, rest) = row.as_chunks_mut::<2>();
    for pair in pairs {
        let e = [
            exp2_nonpositive_simd(simd, simd.mul_add_f32s(pair[0], factor, shift)),
            exp2_nonpositive_simd(simd, simd.mul_add_f32s(pair[1], factor, shift)),
        ];
        *pair = e;
        sums = [simd.add_f32s(sums[0], e[0]), simd.add_f32s(sums[1], e[1])];
    }
    for v in rest {
        *v = exp2_nonpositive_simd(simd, simd.mul_add_f32s(*v, factor, shift));
        sums[0] = simd.add_f32s(sums[0], *v);
    }
    simd.reduce_sum_f32s(simd.add_f32s(sums[0], sums[1]))
}

/// The AVX instructions of `simd`, where it is an x86 instruction set that has them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx_of<S: pulp::Simd>(simd: S) -> Option<pulp::core_arch::x86::Avx> {
    let simd = &simd as &dyn std::any::Any;
    if let Some(v3) = simd.downcast_ref::<pulp::x86::V3>() {
        return Some(v3.avx);
    }
    simd.downcast_ref::<pulp::x86::V4>().map(|v4| v4.avx)
}

/// Kᵀ's panels (`kt`, `[panel count][d][panel]`, zero past key `n`) from `n` keys of `d`
/// floats, key `j` at `keys[j * stride..]`, eight keys by eight columns at a time, each
/// block transposed in registers; `false`, and nothing written, where that cannot run: no
/// AVX, or `d` not a whole number of blocks. (A Zen 3 EPYC, one layer's attention at
/// 8 × 128, both ways in turn: element by element 5–9 % slower, 1 and 2 threads.)
#[inline(always)]
fn fill_keys_by_blocks<S: pulp::Simd>(
    simd: S,
    kt: &mut [f32],
    keys: &[f32],
    stride: usize,
    d: usize,
    n: usize,
    panel: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some(avx) = avx_of(simd) else {
            return false;
        };
        if !d.is_multiple_of(8) || !panel.is_multiple_of(8) {
            return false;
        }
        let zero: std::arch::x86_64::__m256 = pulp::cast([0f32; 8]);
        for (p, kt) in kt.chunks_exact_mut(d * panel).enumerate() {
            for g in (0..panel).step_by(8) {
                let key0 = p * panel + g;
                for c0 in (0..d).step_by(8) {
                    let mut block = [zero; 8];
                    for (j, row) in block.iter_mut().enumerate().take(n.saturating_sub(key0)) {
                        let at = (key0 + j) * stride + c0;
                        let v: &[f32; 8] = keys[at..at + 8].as_array().unwrap_or(&[0.0; 8]);
                        *row = pulp::cast(*v);
                    }
                    for (i, column) in transpose8(avx, block).into_iter().enumerate() {
                        let at = (c0 + i) * panel + g;
                        kt[at..at + 8].copy_from_slice(&pulp::cast::<_, [f32; 8]>(column));
                    }
                }
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (simd, kt, keys, stride, d, n, panel);
        false
    }
}

/// Eight rows of eight floats transposed: element `j` of row `i` of the result is element
/// `i` of row `j` of `r` (pairs of rows interleaved, pairs of those, then the halves
/// swapped across).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose8(
    avx: pulp::core_arch::x86::Avx,
    r: [std::arch::x86_64::__m256; 8],
) -> [std::arch::x86_64::__m256; 8] {
    let t = [
        avx._mm256_unpacklo_ps(r[0], r[1]),
        avx._mm256_unpackhi_ps(r[0], r[1]),
        avx._mm256_unpacklo_ps(r[2], r[3]),
        avx._mm256_unpackhi_ps(r[2], r[3]),
        avx._mm256_unpacklo_ps(r[4], r[5]),
        avx._mm256_unpackhi_ps(r[4], r[5]),
        avx._mm256_unpacklo_ps(r[6], r[7]),
        avx._mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        avx._mm256_shuffle_ps::<0x44>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        avx._mm256_shuffle_ps::<0x44>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        avx._mm256_shuffle_ps::<0x44>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        avx._mm256_shuffle_ps::<0x44>(t[5], t[7]),
        avx._mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        avx._mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        avx._mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        avx._mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        avx._mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        avx._mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        avx._mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        avx._mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        avx._mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
}
