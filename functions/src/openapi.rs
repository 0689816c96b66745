//! The OpenAPI 3.1 document of the HTTP API, generated with utoipa: one operation per
//! entry of [`crate::routes::ROUTES`] (a test holds them equal), every status with its
//! body, problems as `application/problem+json`, and the bearer-token scheme. The committed
//! copy is `docs/openapi.json` (a test fails when it is stale: `make openapi` rewrites it);
//! the models function serves it at `GET /openapi.json`.
//!
//! The schema types below describe the JSON the handlers build; the tests run examples
//! of each through the real handlers, and schemathesis checks live answers against it.

#![allow(dead_code)] // The schema types exist for their derived schemas.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An RFC 9457 problem: every 4xx and 5xx answer.
#[derive(ToSchema)]
pub struct Problem {
    /// `urn:inferencehub:problem:<kind>`.
    #[schema(rename = "type")]
    kind: String,
    /// Short, fixed per kind.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong with this request.
    detail: String,
    /// The detail again, under the name Open Inference Protocol clients read.
    error: String,
    /// The fields at fault (validation problems only).
    errors: Option<Vec<FieldProblem>>,
    /// This request's id (also in `X-Request-Id`).
    request_id: String,
}

/// One field at fault.
#[derive(ToSchema)]
pub struct FieldProblem {
    /// Its path in the request (`features[2]`, `inputs[0].shape`).
    field: String,
    /// What is wrong with it.
    message: String,
}

/// One input of a batch.
#[derive(ToSchema)]
pub struct PredictInput {
    /// Text, for text models.
    prompt: Option<String>,
    /// Features, for tabular models (as many as the model takes, finite).
    features: Option<Vec<f64>>,
}

/// `POST /v1/predict`: one input (`prompt` or `features`) or a batch (`inputs`).
#[derive(ToSchema)]
pub struct PredictRequest {
    /// `[A-Za-z0-9._-]{1,64}`, one of `GET /v1/models`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    model_name: String,
    /// Text, for text models.
    prompt: Option<String>,
    /// Features, for tabular models.
    features: Option<Vec<f64>>,
    /// A batch (at most `IHUB_MAX_BATCH_INPUTS`).
    #[schema(min_items = 1)]
    inputs: Option<Vec<PredictInput>>,
}

/// One prediction: a classifier's `label`, `probability` and `scores`, or a regressor's
/// `values`.
#[derive(ToSchema)]
pub struct Prediction {
    label: Option<String>,
    probability: Option<f64>,
    /// Probability per label.
    scores: Option<std::collections::BTreeMap<String, f64>>,
    values: Option<Vec<f64>>,
}

/// The answer to `POST /v1/predict`: one prediction's members at the top level, or
/// `results` for a batch.
#[derive(ToSchema)]
pub struct PredictResponse {
    model_name: String,
    model_version: String,
    latency_ms: f64,
    request_id: String,
    label: Option<String>,
    probability: Option<f64>,
    scores: Option<std::collections::BTreeMap<String, f64>>,
    values: Option<Vec<f64>>,
    results: Option<Vec<Prediction>>,
}

/// A model of the catalogue.
#[derive(ToSchema)]
pub struct Model {
    name: String,
    version: String,
    /// `text` or `tabular`.
    kind: String,
    /// `classification` or `regression`.
    task: String,
    labels: Vec<String>,
    /// Values per answer of a regressor.
    values: u32,
    /// What an input holds.
    #[schema(value_type = Object)]
    input: Value,
    /// The input tensor (ONNX models).
    #[schema(value_type = Option<Object>)]
    tensor: Value,
    architecture: String,
}

/// `GET /v1/models`.
#[derive(ToSchema)]
pub struct ModelList {
    models: Vec<Model>,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    status: String,
    worker: String,
}

/// `GET /v2/health/live`.
#[derive(ToSchema)]
pub struct Live {
    live: bool,
}

/// `GET /v2/health/ready`.
#[derive(ToSchema)]
pub struct Ready {
    ready: bool,
}

/// `GET /v2/models/{name}/ready`.
#[derive(ToSchema)]
pub struct ModelReady {
    name: String,
    ready: bool,
}

/// `GET /v2`.
#[derive(ToSchema)]
pub struct ServerMetadata {
    name: String,
    version: String,
    extensions: Vec<String>,
}

/// A tensor's name, datatype and shape (-1: any size).
#[derive(ToSchema)]
pub struct TensorMetadata {
    name: String,
    /// `BYTES` or `FP32`.
    datatype: String,
    shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(ToSchema)]
pub struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: String,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
}

/// One input tensor of an infer request.
#[derive(ToSchema)]
pub struct InferInput {
    /// The model's input name (see its metadata).
    name: String,
    /// `[N]` for text, `[N, F]` for tabular models.
    #[schema(min_items = 1, max_items = 2)]
    shape: Vec<i64>,
    /// `BYTES` for text, `FP32` for tabular models.
    #[schema(pattern = "^(BYTES|FP32)$")]
    datatype: String,
    /// `binary_data_size` when the data follows the JSON (binary extension).
    #[schema(value_type = Option<Object>)]
    parameters: Value,
    /// Row-major elements, flat or nested (JSON form).
    #[schema(value_type = Option<Vec<Object>>)]
    data: Value,
}

/// An output the client wants.
#[derive(ToSchema)]
pub struct RequestedOutput {
    /// `label`, `probability`, `scores` or `values`.
    name: String,
    /// `binary_data: true` for the binary extension.
    #[schema(value_type = Option<Object>)]
    parameters: Value,
}

/// `POST /v2/models/{name}/infer` (JSON form; the binary form sends this as the JSON part).
#[derive(ToSchema)]
pub struct InferRequest {
    id: Option<String>,
    /// `binary_data_output: true` for every output in binary.
    #[schema(value_type = Option<Object>)]
    parameters: Value,
    /// Exactly one: the model's input.
    #[schema(min_items = 1, max_items = 1)]
    inputs: Vec<InferInput>,
    outputs: Option<Vec<RequestedOutput>>,
}

/// One output tensor.
#[derive(ToSchema)]
pub struct OutputTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    /// Row-major elements (absent when the output went as binary data).
    #[schema(value_type = Option<Vec<Object>>)]
    data: Value,
    /// `binary_data_size` for binary outputs.
    #[schema(value_type = Option<Object>)]
    parameters: Value,
}

/// The answer to an infer request.
#[derive(ToSchema)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    id: Option<String>,
    outputs: Vec<OutputTensor>,
}

/// `POST /v1/predict`: one prediction or a batch.
#[utoipa::path(post, path = "/v1/predict", tag = "v1", security(("bearer" = [])),
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The prediction(s)", body = PredictResponse),
        (status = 400, description = "Malformed body or inputs that do not match the model; `errors` names the fields", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `predict` or the model's scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit reached (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker or limiter unavailable, or the worker's queue is full (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The worker did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
fn predict() {}

/// `GET /v1/models`: the models this token may use.
#[utoipa::path(get, path = "/v1/models", tag = "v1", security(("bearer" = [])),
    responses(
        (status = 200, description = "The catalogue", body = ModelList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn models() {}

/// `GET /v1/models/{name}`.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "v1", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model for this token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn model() {}

/// `GET /healthz`: whether a worker answers SERVING (no token).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses(
        (status = 200, description = "A worker is SERVING", body = Health),
        (status = 503, description = "No worker is SERVING (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ))]
fn healthz() {}

/// The OpenAPI document itself (no token).
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
fn openapi_json() {}

/// Interactive API documentation built from this document (no token): every operation,
/// and a form that calls it with a pasted token.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
fn docs() {}

/// Open Inference Protocol: liveness (no token).
#[utoipa::path(get, path = "/v2/health/live", tag = "v2",
    responses((status = 200, description = "Live", body = Live)))]
fn v2_live() {}

/// Open Inference Protocol: readiness (no token).
#[utoipa::path(get, path = "/v2/health/ready", tag = "v2",
    responses(
        (status = 200, description = "A worker is SERVING", body = Ready),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_ready() {}

/// Open Inference Protocol: server metadata.
#[utoipa::path(get, path = "/v2", tag = "v2", security(("bearer" = [])),
    responses(
        (status = 200, description = "Server metadata", body = ServerMetadata),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_server() {}

/// Open Inference Protocol: model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Model metadata", body = ModelMetadata),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_model() {}

/// Open Inference Protocol: metadata of one version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "The version served")),
    responses(
        (status = 200, description = "Model metadata", body = ModelMetadata),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model or version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_model_version() {}

/// Open Inference Protocol: model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Ready", body = ModelReady),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_model_ready() {}

/// Open Inference Protocol: readiness of one version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "The version served")),
    responses(
        (status = 200, description = "Ready", body = ModelReady),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model or version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_model_version_ready() {}

/// Open Inference Protocol: inference. JSON, or the binary tensor extension
/// (`Inference-Header-Content-Length`, then raw tensors; answered the same way).
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Length of the JSON part (binary extension)")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The outputs (binary outputs follow the JSON, announced by `Inference-Header-Content-Length`)", body = InferResponse),
        (status = 400, description = "Malformed request; `errors` names the fields", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `predict` or the model's scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit reached", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker or limiter unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The worker did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_infer() {}

/// Open Inference Protocol: inference on one version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2", security(("bearer" = [])),
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "The version served"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Length of the JSON part (binary extension)")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The outputs", body = InferResponse),
        (status = 400, description = "Malformed request; `errors` names the fields", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `predict` or the model's scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such model or version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limit reached", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Worker or limiter unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The worker did not answer in time", body = Problem, content_type = "application/problem+json"),
    ))]
fn v2_infer_version() {}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from the configured issuer: `predict` scope to predict, `model:<name>` to narrow it",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "InferenceHub", description = "ML models behind JWT auth, per-caller rate limits and mutual-TLS gRPC workers: InferenceHub's own JSON (`/v1`) and the Open Inference Protocol v2 (`/v2`)."),
    paths(predict, models, model, healthz, openapi_json, docs, v2_live, v2_ready, v2_server,
        v2_model, v2_model_version, v2_model_ready, v2_model_version_ready, v2_infer, v2_infer_version),
    modifiers(&BearerScheme),
)]
struct ApiDoc;

/// The document, as committed in `docs/openapi.json` and served at `/openapi.json`.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_else(|_| "{}".into()) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    /// `IHUB_WRITE_OPENAPI=1` (what `make openapi` sets) rewrites the committed copy.
    #[test]
    fn the_committed_document_is_current() {
        let generated = document();
        if std::env::var_os("IHUB_WRITE_OPENAPI").is_some() {
            std::fs::write(committed(), &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/openapi.json is stale: run `make openapi` and commit it"
        );
    }

    #[test]
    fn every_route_and_only_those_are_documented() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = crate::routes::ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
