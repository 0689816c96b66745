//! What development and tests need and production never does: a development CA with
//! mTLS certificates ([`certs`]), development JWT signing keys and tokens ([`keys`]), a
//! local DynamoDB-compatible server and its table ([`dynamo`]), a local Secrets Manager
//! ([`secrets`]), a fault-injecting TCP proxy ([`proxy`]), and an in-process HTTP
//! server in front of the Lambda handlers ([`http`]).
//!
//! It depends on neither serving crate, so their own tests can use it without compiling
//! the other half (the functions' tests build no candle).

pub mod certs;
pub mod dynamo;
pub mod http;
pub mod keys;
pub mod proxy;
pub mod secrets;
