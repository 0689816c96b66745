//! Lambda function `predict`: POST /v1/predict.

use inferencehub_functions::config::{PredictConfig, from_env};
use inferencehub_functions::routes::Predict;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    inferencehub_functions::runtime::init_tracing();
    // Built once per cold start; warm invocations reuse the clients and connections.
    let handler = Predict::connect(from_env::<PredictConfig>()?).await?;
    inferencehub_functions::runtime::run(handler).await
}
