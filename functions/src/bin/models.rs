//! Lambda function `models`: GET /v1/models and GET /v1/models/{name}.

use inferencehub_functions::config::{ModelsConfig, from_env};
use inferencehub_functions::routes::Models;

// One thread, one invocation at a time: see predict.rs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    inferencehub_functions::runtime::init_tracing();
    // Built once per cold start; warm invocations reuse the clients and connections.
    let handler = Models::connect(from_env::<ModelsConfig>()?).await?;
    inferencehub_functions::runtime::run(handler).await
}
