//! `GET /healthz` (no auth): 200 when a worker answers SERVING, 503 otherwise. The Open
//! Inference Protocol's `GET /v2/health/ready` is the same check; `GET /v2/health/live`
//! answers 200 while the function runs, without asking the worker.

use http::header;
use inferencehub_proto::ErrorKind;
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::config::HealthConfig;
use crate::layers::{Context, Handler, json_response};
use crate::problem::Problem;
use crate::routes::Function;
use crate::worker::{GrpcWorker, Worker};

/// The health handler over a worker client.
pub struct Health<W> {
    /// Worker client.
    pub worker: W,
}

impl Health<GrpcWorker> {
    /// From its settings, connected: the cold-start path.
    pub async fn connect(config: HealthConfig) -> anyhow::Result<Self> {
        Ok(Self {
            worker: GrpcWorker::connect(config.worker).await?,
        })
    }
}

impl<W: Worker> Handler for Health<W> {
    const FUNCTION: Function = Function::Health;

    async fn handle(&self, req: Request, cx: &mut Context) -> Result<Response<Body>, Problem> {
        // Never cached, neither the 200 nor the 503.
        cx.header(header::CACHE_CONTROL, "no-store");
        let path = crate::routes::pattern_of(req.uri().path());
        if path == Some("/v2/health/live") {
            return Ok(json_response(200, &json!({"live": true})));
        }
        match cx.time("worker", self.worker.serving()).await {
            Ok(true) if path == Some("/v2/health/ready") => {
                Ok(json_response(200, &json!({"ready": true})))
            }
            Ok(true) => Ok(json_response(
                200,
                &json!({"status": "ok", "worker": "SERVING"}),
            )),
            Ok(false) => Err(Problem::new(
                ErrorKind::Unavailable,
                "the model worker is not serving",
            )
            .retry_after(5)),
            Err(e) => {
                tracing::warn!(error = %e, "health check failed");
                Err(
                    Problem::new(ErrorKind::Unavailable, "the model worker cannot be reached")
                        .retry_after(5),
                )
            }
        }
    }
}
