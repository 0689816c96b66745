//! `exp`, `erf` and GELU for the kernels: branch-free polynomial and rational forms that
//! vectorise, each as a scalar function and a vector one computing the same arithmetic.

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
/// 2^f on |f| ≤ 1/2, highest degree first (Horner order): e^(f ln 2)'s Taylor terms to
/// degree 6, (ln 2)^i / i! — [`EXP_POLY`] with its argument in base 2.
const EXP2_POLY: [f32; 7] = [
    1.540_353e-4,
    1.333_355_8e-3,
    9.618_129e-3,
    5.550_411e-2,
    0.240_226_5,
    std::f32::consts::LN_2,
    1.0,
];
/// Below this, [`exp2_nonpositive`] gives 2^this (the smallest normal f32).
const EXP2_FLOOR: f32 = -126.0;
/// erf(z) = z · P(z²) / Q(z²) on |z| < [`ERF_SATURATES`], both of degree 5 in z²,
/// coefficients lowest degree first (Q's constant is 1); ±1 from there on. Fitted for this
/// crate by `scripts/fit-erf.py` (least squares, reweighted towards the smallest largest
/// error, against the f64 `erf` on 6,000 points of [0, 4]): within 2.2e-8 in exact
/// arithmetic, 3e-7 evaluated in f32. The form it replaced (Abramowitz & Stegun 7.1.26: a
/// division, a polynomial, then `exp`) chained about twice as many dependent steps;
/// evaluated in pairs (Estrin's scheme), this one's chain is short, and a GELU epilogue,
/// applied to a tile's rows one after another, waits on that chain. Both forms in one
/// process, in turn call by call (MiniLM-L6, 1 × 128 tokens, two threads of a Zen 3 EPYC,
/// some 670 passes each, two runs): the feed-forward input product with its GELU 5.58 →
/// 5.35–5.39 ms a pass at best (the output product, same FLOPs and no GELU: 4.95–5.06),
/// the pass's median 1.5–2 % shorter.
const ERF_P: [f32; 6] = [
    // The fit's 1.128_378_99, one f32 step from 2/√π (erf's slope at 0), which it is.
    std::f32::consts::FRAC_2_SQRT_PI,
    0.196_247_76,
    0.053_467_218,
    0.004_003_558,
    0.000_288_033_63,
    1.974_770_4e-6,
];
const ERF_Q: [f32; 6] = [
    1.0,
    0.507_251_2,
    0.116_475_835,
    0.015_444_262,
    0.001_216_327,
    3.747_982_2e-5,
];
/// From here erf is ±1 in f32 (erf(4) = 1 − 1.5e-8): arguments are clamped to ±this, and
/// a clamped one gives exactly ±1 (its quarter), so GELU of a large negative input is 0.
const ERF_SATURATES: f32 = 4.0;

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

/// `2^t` for `t ≤ 0` (a softmax's exponent, its maximum subtracted) within about 2e-7
/// relative, branch-free: `t = n + f` with `n` the nearest integer, `2^f` by a degree-6
/// polynomial on |f| ≤ 1/2, and `n` added to its exponent bits — fewer steps than [`exp`]
/// (no split of ln 2, no clamp above). Below -126, 2^-126; above 0 it is not defined.
#[inline(always)]
pub fn exp2_nonpositive(t: f32) -> f32 {
    let t = t.max(EXP2_FLOOR);
    let shifted = t + ROUND_MAGIC;
    let f = t - (shifted - ROUND_MAGIC);
    let p = EXP2_POLY[1..].iter().fold(EXP2_POLY[0], |p, &c| p * f + c);
    // n's two's complement in the low mantissa bits of `shifted`, moved into the exponent
    // field: p · 2^n (p is in [0.7, 1.5), so for n ≥ -126 the exponent stays positive).
    f32::from_bits(p.to_bits().wrapping_add(shifted.to_bits() << 23))
}

/// [`exp2_nonpositive`], a vector at a time (inside a kernel's `with_simd`).
#[inline(always)]
pub fn exp2_nonpositive_simd<S: pulp::Simd>(s: S, t: S::f32s) -> S::f32s {
    let t = s.max_f32s(t, s.splat_f32s(EXP2_FLOOR));
    let shifted = s.add_f32s(t, s.splat_f32s(ROUND_MAGIC));
    let f = s.sub_f32s(t, s.sub_f32s(shifted, s.splat_f32s(ROUND_MAGIC)));
    let mut p = s.splat_f32s(EXP2_POLY[0]);
    for &c in &EXP2_POLY[1..] {
        p = s.mul_add_f32s(p, f, s.splat_f32s(c));
    }
    let exponent = s.wrapping_dyn_shl_u32s(pulp::cast(shifted), s.splat_u32s(23));
    pulp::cast(s.add_u32s(pulp::cast(p), exponent))
}

/// `c₀ + c₁t + … + c₅t⁵` in pairs (Estrin's scheme), with `t2 = t²`.
#[inline(always)]
fn pairs5(t: f32, t2: f32, c: &[f32; 6]) -> f32 {
    (c[0] + c[1] * t) + t2 * ((c[2] + c[3] * t) + t2 * (c[4] + c[5] * t))
}

/// erf(x) within 1e-6 in f32 (the fit's 2.2e-8 plus rounding), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.clamp(-ERF_SATURATES, ERF_SATURATES);
    let t = z * z;
    let t2 = t * t;
    let r = z * pairs5(t, t2, &ERF_P) / pairs5(t, t2, &ERF_Q);
    if z.abs() >= ERF_SATURATES {
        z * 0.25
    } else {
        r
    }
}

/// GELU with the exact (erf) form transformers' `gelu` uses.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let half = 0.5 * x;
    half + half * erf(x * std::f32::consts::FRAC_1_SQRT_2)
}

/// [`exp`], a vector at a time (inside a kernel's `with_simd`).
#[inline(always)]
pub fn exp_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
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

/// [`pairs5`], a vector at a time.
#[inline(always)]
fn pairs5_simd<S: pulp::Simd>(s: S, t: S::f32s, t2: S::f32s, c: &[f32; 6]) -> S::f32s {
    // Not a closure per pair: one would be compiled outside pulp's target features.
    let low = s.mul_add_f32s(s.splat_f32s(c[1]), t, s.splat_f32s(c[0]));
    let mid = s.mul_add_f32s(s.splat_f32s(c[3]), t, s.splat_f32s(c[2]));
    let high = s.mul_add_f32s(s.splat_f32s(c[5]), t, s.splat_f32s(c[4]));
    s.mul_add_f32s(t2, s.mul_add_f32s(t2, high, mid), low)
}

/// [`gelu`], a vector at a time (inside a kernel's `with_simd`).
#[inline(always)]
pub fn gelu_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
    let limit = s.splat_f32s(ERF_SATURATES);
    let z = s.mul_f32s(x, s.splat_f32s(std::f32::consts::FRAC_1_SQRT_2));
    let z = s.min_f32s(s.max_f32s(z, s.splat_f32s(-ERF_SATURATES)), limit);
    let t = s.mul_f32s(z, z);
    let t2 = s.mul_f32s(t, t);
    let erf = s.select_f32s(
        s.greater_than_or_equal_f32s(s.abs_f32s(z), limit),
        s.mul_f32s(z, s.splat_f32s(0.25)),
        s.div_f32s(
            s.mul_f32s(z, pairs5_simd(s, t, t2, &ERF_P)),
            pairs5_simd(s, t, t2, &ERF_Q),
        ),
    );
    let half = s.mul_f32s(x, s.splat_f32s(0.5));
    s.mul_add_f32s(half, erf, half)
}
