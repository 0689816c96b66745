//! InferenceHub's model worker: Candle models held in memory, batched, and served over
//! mutual-TLS gRPC (`inferencehub.v1.ModelInference` plus `grpc.health.v1.Health`).

pub mod backend;
pub mod batching;
pub mod certs;
pub mod client;
pub mod config;
pub mod metrics;
pub mod server;
pub mod service;
pub mod training;
