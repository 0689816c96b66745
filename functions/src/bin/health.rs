//! Lambda function `health`: GET /healthz (no auth).

use inferencehub_functions::config::{HealthConfig, from_env};
use inferencehub_functions::routes::Health;

// One thread, one invocation at a time: see predict.rs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    inferencehub_functions::runtime::init_tracing();
    // Built once per cold start; warm invocations reuse the clients and connections.
    let handler = Health::connect(from_env::<HealthConfig>()?).await?;
    inferencehub_functions::runtime::run(handler).await
}
