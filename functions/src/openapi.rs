//! The OpenAPI 3.1 document of the HTTP API, generated with utoipa: one operation per
//! entry of [`crate::router::ROUTES`] (a test holds them equal), every status with its
//! body, problems as `application/problem+json`, and the bearer-token scheme. The schemas
//! are derived from the very types the handlers parse and write ([`crate::protocol`],
//! [`crate::problem`]). The committed copy is `docs/openapi.json` (a test fails when it is
//! stale: `make openapi` rewrites it); the models function serves it at `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[allow(unused_imports)] // Named in the operations' attributes.
use crate::problem::ProblemBody as Problem;
#[allow(unused_imports)]
use crate::protocol::openai::{EmbeddingsRequest, EmbeddingsResponse};
#[allow(unused_imports)]
use crate::protocol::v1::{ModelList, ModelView as Model, PredictRequest, PredictResponse};
#[allow(unused_imports)]
use crate::protocol::v2::{
    InferRequest, InferResponse, Live, ModelMetadata, ModelReady, Ready, ServerMetadata,
};
#[allow(unused_imports)]
use crate::routes::health::Status as Health;

/// The operations, one per route: utoipa reads their attributes; the functions never run
/// (the handlers are in [`crate::routes`]).
#[allow(dead_code)]
mod operations {
    use super::*;

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

    /// `POST /v1/embeddings`: OpenAI's embeddings API, for embedding models. Problems also
    /// carry OpenAI's `error` object (`message`, `type`, `param`, `code`).
    #[utoipa::path(post, path = "/v1/embeddings", tag = "v1", security(("bearer" = [])),
        request_body(content = EmbeddingsRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "One vector per input", body = EmbeddingsResponse),
            (status = 400, description = "Malformed body, a model that is not an embedding model, `dimensions` beyond the model's, or a text too long with `truncate: false`; `errors` and `error.param` name the parameter", body = Problem, content_type = "application/problem+json"),
            (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
            (status = 403, description = "The token lacks `predict` or the model's scope", body = Problem, content_type = "application/problem+json"),
            (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
            (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
            (status = 429, description = "Rate limit reached (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
            (status = 503, description = "Worker or limiter unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
            (status = 504, description = "The worker did not answer in time", body = Problem, content_type = "application/problem+json"),
        ))]
    fn embeddings() {}

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
}

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
    paths(
        operations::predict,
        operations::embeddings,
        operations::models,
        operations::model,
        operations::healthz,
        operations::openapi_json,
        operations::docs,
        operations::v2_live,
        operations::v2_ready,
        operations::v2_server,
        operations::v2_model,
        operations::v2_model_version,
        operations::v2_model_ready,
        operations::v2_model_version_ready,
        operations::v2_infer,
        operations::v2_infer_version,
    ),
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
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
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
        let mut routes: Vec<(String, String)> = crate::router::ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
