//! InferenceHub's model worker: Candle models held in memory, batched, and served over
//! mutual-TLS gRPC (`inferencehub.v1.ModelInference` plus `grpc.health.v1.Health`).
//!
//! A call flows one way: [`tls`] (the edge: connection cap, handshake timeout,
//! client names, live certificate reload) -> [`server`] (health, start and drain) -> [`service`] (the
//! gRPC service: validation with the shared signature checks, errors from the shared
//! table with `google.rpc.BadRequest` details) -> [`batching`] (per-model queue and
//! scheduler) -> [`backend`] (one module per model family, on its own thread). [`config`]
//! holds the typed flags, [`metrics`] the Prometheus and EMF output, [`client`] the
//! operator CLI's mTLS client, [`tools`] the measurement subcommands (CPU-vs-GPU answers,
//! encoder timing, gRPC load). Training and development certificates live in `tools/`.

pub mod backend;
pub mod batching;
pub mod client;
pub mod config;
pub mod metrics;
pub mod server;
pub mod service;
pub mod tls;
pub mod tools;
