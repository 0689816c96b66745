//! What every function's `main` does once per cold start: JSON logs, and serving its
//! handler inside the shared layers.

use std::convert::Infallible;
use std::sync::Arc;

use crate::layers;

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
