#!/usr/bin/env python3
"""Fits the CPU kernels' erf: erf(z) ~ z * P(z^2) / Q(z^2) on [0, 4], P and Q of degree 5
in z^2, Q's constant 1 (gpu-worker/kernels/src/math.rs, ERF_P and ERF_Q).

Linearised least squares (z P - erf * Q = 0, weighted by the last Q), its weights raised
where the error is largest, round after round (towards the smallest largest error); then
the fit checked in f32 arithmetic. Needs numpy only. Prints the coefficients as Rust.
"""

import math

import numpy as np

LIMIT = 4.0  # erf(4) = 1 - 1.5e-8: ±1 in f32 from here on
DEGREE = 5
POINTS = 6000
ROUNDS = 120

# Dense near both ends (Chebyshev spacing).
z = (1 - np.cos(np.linspace(0, np.pi, POINTS))) / 2 * LIMIT
want = np.array([math.erf(v) for v in z])
t = z * z


def poly(c, x):
    return sum(ci * x**i for i, ci in enumerate(c))


def fit():
    q_last = np.ones_like(z)
    weights = np.ones_like(z)
    best = None
    for _ in range(ROUNDS):
        a = np.hstack(
            [
                np.stack([z * t**i for i in range(DEGREE + 1)], 1),
                np.stack([-want * t**j for j in range(1, DEGREE + 1)], 1),
            ]
        )
        w = np.sqrt(weights) / q_last
        c, *_ = np.linalg.lstsq(a * w[:, None], want * w, rcond=None)
        p, q = c[: DEGREE + 1], np.concatenate([[1.0], c[DEGREE + 1 :]])
        err = z * poly(p, t) / poly(q, t) - want
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p, q)
        q_last = poly(q, t)
        weights = weights * (np.abs(err) / worst + 1e-3)
        weights /= weights.sum()
    return best


def pairs5(c, t, t2):
    """As the kernels evaluate it (Estrin's scheme), in f32."""
    return (c[0] + c[1] * t) + t2 * ((c[2] + c[3] * t) + t2 * (c[4] + c[5] * t))


def main():
    worst, p, q = fit()
    p32, q32 = p.astype(np.float32), q.astype(np.float32)
    x = np.linspace(-6, 6, 40_001).astype(np.float32)
    zc = np.clip(x, -LIMIT, LIMIT).astype(np.float32)
    t32 = zc * zc
    t2 = t32 * t32
    got = np.where(np.abs(zc) >= LIMIT, zc * np.float32(0.25), zc * pairs5(p32, t32, t2) / pairs5(q32, t32, t2))
    exact = np.array([math.erf(float(v)) for v in x])
    print(f"// largest error: {worst:.2e} exact, {np.abs(got - exact).max():.2e} in f32")
    for name, c in (("ERF_P", p32), ("ERF_Q", q32)):
        print(f"const {name}: [f32; 6] = [{', '.join(repr(float(v)) for v in c)}];")


if __name__ == "__main__":
    main()
