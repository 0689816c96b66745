//! The three functions behind one local HTTP server, routed by the functions' own route
//! table: the same handlers and layers the Lambda binaries run, without `cargo lambda`.

use std::sync::Arc;

use inferencehub_devkit::http::Handler;
use inferencehub_functions::app::App;
use inferencehub_functions::problem::Problem;
use inferencehub_functions::ratelimit::RateLimiter;
use inferencehub_functions::worker::Worker;
use inferencehub_proto::ErrorKind;
use lambda_http::{Body, Request, Response};

/// An [`App`] as the local server's handler.
pub struct Local<L, W>(pub Arc<App<L, W>>);

impl<L: RateLimiter + 'static, W: Worker + 'static> Handler for Local<L, W> {
    async fn call(&self, req: Request) -> Response<Body> {
        self.0.handle(req).await
    }

    fn too_large(&self, limit: usize) -> Response<Body> {
        Problem::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .into_response("")
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve<L: RateLimiter + 'static, W: Worker + 'static>(
    listener: tokio::net::TcpListener,
    app: Arc<App<L, W>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    inferencehub_devkit::http::serve(listener, Arc::new(Local(app)), shutdown).await;
}
