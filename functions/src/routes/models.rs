//! `GET /v1/models` and `GET /v1/models/{name}`: the worker catalogue, for any valid token;
//! `model:<name>` scopes hide the other models.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use inferencehub_proto::ErrorKind;
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::config::ModelsConfig;
use crate::layers::{Context, Handler, json_response};
use crate::problem::Problem;
use crate::routes::{Function, caller, path_param};
use crate::worker::{GrpcWorker, Worker};

/// The catalogue handler over a worker client.
pub struct Models<W> {
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Worker client.
    pub worker: W,
    /// Cached catalogue.
    pub catalog: Catalog,
}

impl Models<GrpcWorker> {
    /// From its settings, connected: the cold-start path.
    pub async fn connect(config: ModelsConfig) -> anyhow::Result<Self> {
        Ok(Self {
            auth: Arc::new(Authenticator::new(config.auth).await?),
            worker: GrpcWorker::connect(config.worker).await?,
            catalog: Catalog::new(config.api.catalog_ttl),
        })
    }
}

/// One model as the API shows it.
pub fn model_json(m: &ModelInfo) -> Value {
    let (kind, input) = match m.kind() {
        ModelKind::Tabular => (
            "tabular",
            json!({"features": m.feature_count, "feature_names": m.feature_names}),
        ),
        _ => (
            "text",
            json!({"prompt": {"max_tokens": m.max_tokens, "max_bytes": m.max_prompt_bytes}}),
        ),
    };
    let task = match m.task() {
        ModelTask::Regression => "regression",
        _ => "classification",
    };
    let tensor = m
        .input
        .as_ref()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}));
    json!({
        "name": m.name, "version": m.version, "kind": kind, "task": task,
        "labels": m.labels, "values": m.value_count,
        "input": input, "tensor": tensor, "architecture": m.architecture,
    })
}

impl<W: Worker> Handler for Models<W> {
    const FUNCTION: Function = Function::Models;

    async fn handle(&self, req: Request, cx: &mut Context) -> Result<Response<Body>, Problem> {
        let caller = cx.time("auth", caller(&self.auth, &req)).await?;
        let models = cx
            .time("worker", self.catalog.models(&self.worker))
            .await
            .map_err(|e| Problem::from_worker(&e))?;
        let visible = models.iter().filter(|m| caller.may_use_model(&m.name));
        let mut response = match path_param(&req, "name") {
            None => json_response(
                200,
                &json!({"models": visible.map(model_json).collect::<Vec<_>>()}),
            ),
            Some(name) => {
                let model = visible.clone().find(|m| m.name == name).ok_or_else(|| {
                    Problem::new(ErrorKind::NotFound, format!("no model named {name:?}"))
                })?;
                json_response(200, &model_json(model))
            }
        };
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=30"),
        );
        Ok(response)
    }
}
