//! Lambda function `predict`: `POST /v1/predict`.

use std::convert::Infallible;
use std::sync::Arc;

use inferencehub_functions::gateway::PredictHandler;
use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    inferencehub_functions::init_tracing();
    // Built once per cold start; warm invocations reuse the clients and connections.
    let handler = Arc::new(PredictHandler::from_env().await?);
    lambda_http::run(service_fn(move |req: Request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req).await) }
    }))
    .await
}
