//! `GET /v1/models` and `GET /v1/models/{name}`: the worker catalogue, for any valid token;
//! `model:<name>` scopes hide the other models. The Open Inference Protocol's metadata
//! routes too: `GET /v2` (server), `GET /v2/models/{name}[/versions/{version}]` (model) and
//! `.../ready`.

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
use crate::routes::{Function, caller, check_version, path_param, pattern_of};
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

/// `GET /docs`: the API page, built in the browser from `/openapi.json`.
const DOCS_PAGE: &str = include_str!("../docs.html");

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
        let pattern = pattern_of(req.uri().path());
        if pattern == Some("/openapi.json") {
            // The API's description is public, like the routes it describes.
            let mut response = Response::new(Body::Text(crate::openapi::document()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        if pattern == Some("/docs") {
            let mut response = Response::new(Body::Text(DOCS_PAGE.into()));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // The page loads nothing from anywhere but this API.
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            );
            return Ok(response);
        }
        let caller = cx.time("auth", caller(&self.auth, &req)).await?;
        if pattern == Some("/v2") {
            return Ok(json_response(
                200,
                &json!({
                    "name": "inferencehub",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }),
            ));
        }
        let models = cx
            .time("worker", self.catalog.models(&self.worker))
            .await
            .map_err(|e| Problem::from_worker(&e))?;
        let visible = models.iter().filter(|m| caller.may_use_model(&m.name));
        let one = |name: &str| {
            visible.clone().find(|m| m.name == name).ok_or_else(|| {
                Problem::new(ErrorKind::NotFound, format!("no model named {name:?}"))
            })
        };
        let mut response = match (pattern, path_param(&req, "name")) {
            (Some(p), Some(name)) if p.starts_with("/v2/models/") => {
                let model = one(&name)?;
                check_version(&req, model)?;
                if p.ends_with("/ready") {
                    json_response(200, &json!({"name": model.name, "ready": true}))
                } else {
                    json_response(200, &crate::oip::model_metadata(model))
                }
            }
            (_, None) => json_response(
                200,
                &json!({"models": visible.clone().map(model_json).collect::<Vec<_>>()}),
            ),
            (_, Some(name)) => json_response(200, &model_json(one(&name)?)),
        };
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=30"),
        );
        Ok(response)
    }
}
