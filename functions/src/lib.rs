//! InferenceHub's light half: the Lambda functions `predict`, `models` and `health`.
//!
//! A request flows one way, one module per step: [`layers`] (request id, span, the route
//! match against [`router::ROUTES`], problem rendering, timing and metrics, around every
//! handler) -> a handler in [`routes`] (one file each) -> [`auth`] (JWT) -> a codec of
//! [`protocol`] decodes the body into a [`command::Command`] -> validation against the
//! model's signature from [`catalog`] -> [`ratelimit`] (DynamoDB) -> [`pools`] (the model's
//! worker pool) -> [`worker`] (mTLS gRPC) -> the codec encodes the answer. Every protocol takes the one path in
//! [`routes::predict`]. Errors answer as RFC 9457 problems ([`problem`]) from the shared
//! error table. Each binary in `src/bin` reads its [`config`], connects once per cold start
//! and hands its handler to [`runtime::run`]; [`app`] routes all three in-process.

pub mod app;
pub mod auth;
pub mod aws;
pub mod catalog;
pub mod command;
pub mod config;
pub mod crypto;
pub mod emf;
pub mod layers;
pub mod openapi;
pub mod pools;
pub mod problem;
pub mod protocol;
pub mod ratelimit;
pub mod router;
pub mod routes;
pub mod runtime;
pub mod secrets;
pub mod worker;

#[cfg(test)]
mod fakes;
