//! The CPU encoder's kernels: embeddings, dense layers with their bias and GELU or residual
//! applied as they are stored ([`matmul`] on a [`PackedMatrix`]), LayerNorm and attention,
//! written once over pulp's `Simd` trait and compiled for each instruction set. Which one
//! runs is an [`Isa`] value chosen at load ([`Isa::best`]); tests and benchmarks pick each
//! explicitly, and [`reference`](mod@reference) holds the plain scalar arithmetic every path is held to.
//!
//! Each entry point splits its work over the rayon pool ([`pass`] runs a whole forward pass
//! there with the pool's threads kept awake between its steps); each task runs one kernel struct
//! (a `pulp::WithSimd`) whose `with_simd` is `#[inline(always)]`, as is everything its loops
//! call, so the whole body is compiled inside pulp's target-feature function.

mod cpu;
mod gemm;
mod isa;
mod math;
mod ops;
mod pool;
pub mod reference;

pub use cpu::{Cpu, Vendor};
pub use gemm::{Epilogue, PackedMatrix, matmul};
pub use isa::Isa;
pub use math::{erf, exp, exp_simd, exp2_nonpositive, exp2_nonpositive_simd, gelu, gelu_simd};
pub use ops::{Norm, attention, embed, layer_norm_rows};
pub use pool::{Pinning, allowed_cpus, build_compute_pool, pass, pin_current_thread, pool_cpus};
/// The SIMD abstraction [`Isa::run`] takes a kernel in, for callers that write one of their
/// own (the benchmarks' FMA peak probe) against the same version.
pub use pulp;
