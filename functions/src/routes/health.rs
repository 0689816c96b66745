//! The `health` function (no auth): `GET /healthz` and the Open Inference Protocol's
//! `GET /v2/health/ready` answer 200 when a worker answers SERVING, 503 otherwise;
//! `GET /v2/health/live` answers 200 while the function runs, without asking the worker.

use http::header;
use inferencehub_proto::ErrorKind;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::HealthConfig;
use crate::layers::{Context, Handler, json_response};
use crate::pools::Pools;
use crate::problem::Problem;
use crate::protocol::v2::{Live, Ready};
use crate::router::{Function, HealthOp, Matched};
use crate::worker::Worker;

/// The health handler over a worker client.
pub struct Health<W> {
    /// Worker client.
    pub worker: W,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct Status {
    /// `ok`.
    pub status: &'static str,
    /// `SERVING`.
    pub worker: &'static str,
}

impl Health<Pools> {
    /// From its settings, connected: the cold-start path.
    pub async fn connect(config: HealthConfig) -> anyhow::Result<Self> {
        Ok(Self {
            worker: Pools::connect(config.worker).await?,
        })
    }
}

impl<W: Worker> Handler for Health<W> {
    const FUNCTION: Function = Function::Health;
    type Op = HealthOp;

    async fn handle(
        &self,
        op: HealthOp,
        _req: Request,
        _route: &Matched,
        cx: &mut Context,
    ) -> Result<Response<Body>, Problem> {
        // Never cached, neither the 200 nor the 503.
        cx.header(header::CACHE_CONTROL, "no-store");
        if op == HealthOp::V2Live {
            return Ok(json_response(200, &Live { live: true }));
        }
        match cx.time("worker", self.worker.serving()).await {
            Ok(true) if op == HealthOp::V2Ready => Ok(json_response(200, &Ready { ready: true })),
            Ok(true) => Ok(json_response(
                200,
                &Status {
                    status: "ok",
                    worker: "SERVING",
                },
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
