//! `exp`, `erf` and GELU for the kernels: branch-free polynomial forms that vectorise, each
//! as a scalar function and a vector one computing the same arithmetic.

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

/// [`gelu`], a vector at a time (inside a kernel's `with_simd`).
#[inline(always)]
pub fn gelu_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
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
