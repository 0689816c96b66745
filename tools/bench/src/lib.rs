//! InferenceHub's measurement tooling, behind the `inferencehub-bench` binary: one model's
//! answers and forward-pass timing on a chosen device ([`measure`], the GPU check), and the
//! project's one load generator ([`load`]), which the benchmarks in `benches/` drive too.
//! Nothing here ships in a Lambda zip or a worker image.

pub mod cold_start;
pub mod cpuid;
pub mod load;
pub mod measure;
