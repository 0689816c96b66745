//! InferenceHub's light half: the Lambda functions `predict`, `models` and `health`.
//!
//! A request flows one way, one module per step: [`layers`] (request id, span, method
//! check, problem rendering, timing and metrics, around every handler) -> a handler in
//! [`routes`] (one file each; [`routes::ROUTES`] is the one route table) -> [`auth`] (JWT)
//! -> [`request`] (parsing, validation against the model's signature from [`catalog`]) ->
//! [`ratelimit`] (DynamoDB) -> [`worker`] (mTLS gRPC). Errors answer as RFC 9457 problems
//! ([`problem`]) from the shared error table. Each binary in `src/bin` reads its
//! [`config`], connects once per cold start and hands its handler to [`run`].

pub mod auth;
pub mod catalog;
pub mod config;
pub mod emf;
pub mod layers;
pub mod oip;
pub mod openapi;
pub mod problem;
pub mod ratelimit;
pub mod request;
pub mod routes;
pub mod secrets;
pub mod worker;

#[cfg(test)]
mod fakes;

use std::convert::Infallible;
use std::sync::Arc;

/// Installs aws-lc-rs as the process-wide rustls crypto provider (the one provider this
/// workspace compiles in). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// JSON logs on stdout (CloudWatch), level from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Serves `handler` as a Lambda function, inside the shared layers, until the runtime
/// stops. Clients and connections built before this call serve every warm invocation.
pub async fn run<H: layers::Handler + 'static>(handler: H) -> Result<(), lambda_http::Error> {
    let handler = Arc::new(handler);
    lambda_http::run(lambda_http::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(layers::serve(&*handler, req).await) }
    }))
    .await
}
