//! InferenceHub's model worker: models held in memory (on the CPU by default, on CUDA with
//! the `cuda` feature), batched, and served over mutual-TLS gRPC
//! (`inferencehub.v1.ModelInference` plus `grpc.health.v1.Health`).
//!
//! A call flows one way: [`tls`] (the edge: connection cap, handshake timeout, client
//! names, live certificate reload) -> [`server`] (health, start and drain; the served set
//! from the model repository in [`registry`], an S3 one mirrored by [`mirror`]) -> [`service`]
//! (the gRPC service: validation with the shared signature checks, errors from the shared
//! table with `google.rpc.BadRequest` details) -> [`batching`] (per-model queue and
//! scheduler) -> [`models`] (one module per model family, each model on its own thread;
//! the CPU encoder's [`kernels`] apart). [`config`] holds the typed flags, [`metrics`] the
//! Prometheus and EMF output, [`client`] the operator CLI's mTLS client. Only what serves
//! lives here: benchmarks, profiling, training and load generation are in `tools/`.

pub mod admin;
pub mod batching;
pub mod client;
pub mod config;
pub mod metrics;
pub mod mirror;
pub mod models;
pub mod registry;
pub mod server;
pub mod service;
pub mod tls;

pub use inferencehub_kernels as kernels;
