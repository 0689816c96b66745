//! InferenceHub's light half: the logic behind the Lambda functions `predict`, `models`
//! and `health`. Each binary in `src/bin` is a thin `main` over [`gateway::Gateway`].
//!
//! Request path: auth -> validation -> rate limit -> worker client, one module each.

pub mod auth;
pub mod catalog;
pub mod config;
pub mod devkeys;
pub mod emf;
pub mod gateway;
pub mod local;
pub mod problem;
pub mod ratelimit;
pub mod request;
pub mod worker;

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
