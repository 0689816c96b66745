//! All three functions behind one router: what API Gateway does in AWS, done in-process
//! for the local server and the tests.

use lambda_http::{Body, Request, Response};

use crate::layers;
use crate::ratelimit::RateLimiter;
use crate::router::{Function, function_for};
use crate::routes::{Health, Models, Predict};
use crate::worker::Worker;

/// The three handlers.
pub struct App<L, W> {
    /// The `predict` function.
    pub predict: Predict<L, W>,
    /// The `models` function.
    pub models: Models<W>,
    /// The `health` function.
    pub health: Health<W>,
}

impl<L: RateLimiter, W: Worker> App<L, W> {
    /// Routes by the table, like the HTTP API does.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        match function_for(req.uri().path()) {
            Some(Function::Predict) => layers::serve(&self.predict, req).await,
            Some(Function::Models) => layers::serve(&self.models, req).await,
            Some(Function::Health) => layers::serve(&self.health, req).await,
            None => layers::not_found(&req),
        }
    }
}
