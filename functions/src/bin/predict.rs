//! Lambda function `predict`: POST /v1/predict.

use inferencehub_functions::config::{PredictConfig, from_env};
use inferencehub_functions::routes::Predict;

// One thread: Lambda hands an instance one invocation at a time, so worker threads would
// only add threads to start and hand-offs to pay for, at a fraction of a core (predict at
// 256 MB: 1.3 ms less CPU per cold start, warm invocations 4 ms instead of 7; `make
// bench-cold-start`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    inferencehub_functions::runtime::init_tracing();
    // Built once per cold start; warm invocations reuse the clients and connections.
    let handler = Predict::connect(from_env::<PredictConfig>()?).await?;
    inferencehub_functions::runtime::run(handler).await
}
