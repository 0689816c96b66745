//! The plain scalar arithmetic the kernels compute, accumulated in f64, written for reading
//! rather than speed: what every instruction-set path is tested against.

use super::ops::Norm;

/// erf(x) by Simpson's rule on 2/√π · ∫₀ˣ e^(−t²) dt (error far below f32 precision).
pub fn erf(x: f64) -> f64 {
    let n = 4096;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let inner: f64 = (1..n)
        .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    (f(0.0) + inner + f(x)) * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// GELU in its exact (erf) form.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// LayerNorm of one row.
pub fn layer_norm(row: &[f64], norm: &Norm) -> Vec<f32> {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + f64::from(norm.eps)).sqrt();
    row.iter()
        .zip(&norm.gamma)
        .zip(&norm.beta)
        .map(|((v, &g), &b)| ((v - mean) * inv * f64::from(g) + f64::from(b)) as f32)
        .collect()
}

/// See [`super::embed`].
pub fn embed(
    rows: &[(u32, usize)],
    word: &[f32],
    position: &[f32],
    token_type0: &[f32],
    norm: &Norm,
) -> Vec<f32> {
    let h = token_type0.len();
    rows.iter()
        .flat_map(|&(id, pos)| {
            let sum: Vec<f64> = (0..h)
                .map(|c| {
                    f64::from(word[id as usize * h + c])
                        + f64::from(position[pos * h + c])
                        + f64::from(token_type0[c])
                })
                .collect();
            layer_norm(&sum, norm)
        })
        .collect()
}

/// `a · w + bias` in f64 (see [`super::matmul`]): `a` `[rows, k]`, `w` `[k, n]`.
pub fn dense(a: &[f32], w: &[f32], k: usize, bias: &[f32]) -> Vec<f64> {
    let n = bias.len();
    a.chunks_exact(k)
        .flat_map(|row| {
            (0..n).map(move |c| {
                row.iter()
                    .enumerate()
                    .map(|(i, &x)| f64::from(x) * f64::from(w[i * n + c]))
                    .sum::<f64>()
                    + f64::from(bias[c])
            })
        })
        .collect()
}

/// See [`super::attention`].
pub fn attention(qkv: &[f32], offsets: &[usize], heads: usize) -> Vec<f32> {
    let h = qkv.len() / 3 / offsets[offsets.len() - 1];
    let d = h / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let at = |row: usize, col: usize| f64::from(qkv[row * 3 * h + col]);
    let mut context = vec![0f32; qkv.len() / 3];
    for s in 0..offsets.len() - 1 {
        let rows = offsets[s]..offsets[s + 1];
        for head in 0..heads {
            let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
            for i in rows.clone() {
                let scores: Vec<f64> = rows
                    .clone()
                    .map(|j| (0..d).map(|c| at(i, qo + c) * at(j, ko + c)).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..d {
                    let value: f64 = rows
                        .clone()
                        .zip(&weights)
                        .map(|(j, w)| w * at(j, vo + c))
                        .sum();
                    context[i * h + head * d + c] = (value / total) as f32;
                }
            }
        }
    }
    context
}

/// A deterministic pseudo-random sequence in [-scale, scale): the inputs and weights the
/// kernels' tests and benchmarks compare paths on.
pub fn test_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
