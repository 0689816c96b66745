//! The three HTTP handlers, generic over the rate limiter and the worker client so unit
//! tests can swap in in-memory parts. Each handler answers every request with a
//! `Response` (4xx/5xx are problem+json answers, never function errors).
//!
//! `predict` runs: auth -> body checks and validation (against the cached catalogue) ->
//! rate limit -> worker. Invalid requests never reach DynamoDB or the worker, and a
//! client's bug does not eat its quota; unauthenticated requests are refused before any
//! of it.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use inferencehub_proto::pb::{ModelInfo, ModelKind, PredictResponse};
use inferencehub_proto::{ErrorKind, FieldError, REQUEST_ID_METADATA, is_sane_request_id};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::catalog::Catalog;
use crate::config::{ApiConfig, AuthConfig, LimiterBackend, RateLimitConfig, WorkerConfig};
use crate::emf::RequestMetrics;
use crate::problem::Problem;
use crate::ratelimit::{
    AnyLimiter, DynamoLimiter, MemoryLimiter, Policy, RateLimiter, policy_header, state_header,
};
use crate::request::{Validated, parse, validate};
use crate::worker::{GrpcWorker, Worker, WorkerError};

/// The request id: the caller's `x-request-id` if sane, else the Lambda request id, else
/// a new UUID.
pub fn request_id(req: &Request) -> String {
    if let Some(id) = req
        .headers()
        .get(REQUEST_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_sane_request_id(s))
    {
        return id.to_string();
    }
    if let Some(ctx) = req.lambda_context_ref()
        && is_sane_request_id(&ctx.request_id)
    {
        return ctx.request_id.clone();
    }
    uuid::Uuid::new_v4().to_string()
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn finish(
    mut response: Response<Body>,
    request_id: &str,
    headers: Vec<(HeaderName, String)>,
) -> Response<Body> {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_METADATA), value);
    }
    response
}

fn method_not_allowed(allow: &'static str) -> Problem {
    Problem::new(
        ErrorKind::MethodNotAllowed,
        format!("this route only accepts {allow}"),
    )
    .with_header(header::ALLOW, allow)
}

async fn authenticate(auth: &Authenticator, req: &Request) -> Result<Caller, Problem> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth.authenticate(header).await.map_err(|e| match e {
        AuthError::Missing => Problem::unauthorized("a bearer token is required", false),
        AuthError::Invalid(why) => Problem::unauthorized(why, true),
    })
}

/// A worker failure as a client sees it: validation and not-found messages are the
/// worker's own (they name the field); everything else is generic, details go to the log.
pub fn worker_problem(e: &WorkerError) -> Problem {
    let kind = e.kind();
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::NotFound => {
            let field = e.message.split(':').next().unwrap_or("body").to_string();
            let mut p = Problem::new(kind, e.message.clone());
            p.errors = vec![FieldError::new(field, e.message.clone())];
            p
        }
        _ => {
            tracing::error!(code = ?e.code, error = %e.message, "worker call failed");
            let detail = match kind {
                ErrorKind::Overloaded => "the model is busy; retry shortly",
                ErrorKind::Unavailable => "no model worker is available right now",
                ErrorKind::DeadlineExceeded => "the model worker did not answer in time",
                _ => "the model worker failed to answer",
            };
            let p = Problem::new(kind, detail);
            if kind.http_status() == 503 {
                p.retry_after(1)
            } else {
                p
            }
        }
    }
}

fn scores(r: &PredictResponse) -> Map<String, Value> {
    r.scores
        .iter()
        .map(|s| (s.label.clone(), json!(s.probability)))
        .collect()
}

fn model_json(m: &ModelInfo) -> Value {
    let (kind, input) = match m.kind() {
        ModelKind::Tabular => ("tabular", json!({"features": m.feature_count})),
        _ => (
            "text",
            json!({"prompt": {"max_tokens": m.max_tokens, "max_bytes": m.max_prompt_bytes}}),
        ),
    };
    json!({
        "name": m.name, "version": m.version, "kind": kind, "labels": m.labels,
        "input": input, "architecture": m.architecture,
    })
}

/// `Server-Timing` entries, in milliseconds.
#[derive(Default)]
struct Timing(Vec<(&'static str, f64)>);

impl Timing {
    fn add(&mut self, name: &'static str, since: Instant) {
        self.0.push((name, since.elapsed().as_secs_f64() * 1e3));
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, ms)| format!("{n};dur={ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `POST /v1/predict`.
pub struct PredictHandler<L, W> {
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Rate limiting.
    pub limiter: L,
    /// Worker client.
    pub worker: W,
    /// Cached model catalogue.
    pub catalog: Catalog,
    /// Limits and tiers.
    pub limits: RateLimitConfig,
    /// Body and input limits.
    pub api: ApiConfig,
}

impl PredictHandler<AnyLimiter, GrpcWorker> {
    /// Everything from the environment (see the README), connected: the cold-start path.
    pub async fn from_env() -> anyhow::Result<Self> {
        let limits = RateLimitConfig::from_env()?;
        let api = ApiConfig::from_env()?;
        let limiter = match limits.backend {
            LimiterBackend::DynamoDb => AnyLimiter::Dynamo(DynamoLimiter::new(
                DynamoLimiter::client_from_env(limits.timeout).await,
                limits.table.clone(),
            )),
            LimiterBackend::Memory => {
                tracing::warn!("in-memory rate limiter: limits are per process (development only)");
                AnyLimiter::Memory(MemoryLimiter::default())
            }
        };
        Ok(Self {
            auth: Arc::new(Authenticator::new(AuthConfig::from_env()?).await?),
            limiter,
            worker: GrpcWorker::connect(WorkerConfig::from_env()?).await?,
            catalog: Catalog::new(api.catalog_ttl),
            limits,
            api,
        })
    }
}

impl<L: RateLimiter, W: Worker> PredictHandler<L, W> {
    /// Answers one request; every log line it writes carries the request id.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let request_id = request_id(&req);
        let span = tracing::info_span!("request", function = "predict", request_id = %request_id);
        self.handle_in_span(req, request_id).instrument(span).await
    }

    async fn handle_in_span(&self, req: Request, request_id: String) -> Response<Body> {
        let started = Instant::now();
        let mut metrics = RequestMetrics {
            function: "predict",
            request_id: request_id.clone(),
            ..Default::default()
        };
        let mut headers = Vec::new();
        let mut timing = Timing::default();
        let response = match self
            .run(req, &request_id, &mut metrics, &mut headers, &mut timing)
            .await
        {
            Ok(response) => response,
            Err(problem) => problem.into_response(&request_id),
        };
        timing.add("total", started);
        headers.push((HeaderName::from_static("server-timing"), timing.header()));
        let response = finish(response, &request_id, headers);
        metrics.status = response.status().as_u16();
        metrics.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        metrics.emit();
        response
    }

    async fn run(
        &self,
        req: Request,
        request_id: &str,
        metrics: &mut RequestMetrics,
        headers: &mut Vec<(HeaderName, String)>,
        timing: &mut Timing,
    ) -> Result<Response<Body>, Problem> {
        if req.method() != http::Method::POST {
            return Err(method_not_allowed("POST"));
        }
        let t = Instant::now();
        let caller = authenticate(&self.auth, &req).await;
        timing.add("auth", t);
        let caller = caller?;
        if !caller.has_scope("predict") {
            return Err(Problem::forbidden(
                "the token lacks the `predict` scope",
                "predict",
            ));
        }
        let (tier, limit) = self.limits.limit_for(caller.tier.as_deref());
        let policy = Policy {
            name: tier,
            limit,
            window: self.limits.window,
        };
        headers.push((
            HeaderName::from_static("ratelimit-policy"),
            policy_header(&policy),
        ));

        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let body = req.body().as_ref();
        let max = self.api.max_body_bytes;
        if declared.is_some_and(|n| n > max) || body.len() > max {
            return Err(Problem::new(
                ErrorKind::PayloadTooLarge,
                format!("the body is larger than {max} bytes"),
            ));
        }
        let parsed = parse(body).map_err(|e| Problem::invalid(vec![e]))?;
        metrics.model = Some(parsed.model_name.clone());
        if !caller.may_use_model(&parsed.model_name) {
            return Err(Problem::forbidden(
                format!("this token may not use model {:?}", parsed.model_name),
                &format!("model:{}", parsed.model_name),
            ));
        }
        let model = self
            .catalog
            .model(&self.worker, &parsed.model_name)
            .await
            .map_err(|e| worker_problem(&e))?
            .ok_or_else(|| {
                let mut p = Problem::new(
                    ErrorKind::NotFound,
                    format!("no model named {:?}", parsed.model_name),
                );
                p.errors = vec![FieldError::new(
                    "model_name",
                    "no such model (see GET /v1/models)",
                )];
                p
            })?;
        let validated = validate(
            parsed,
            &model,
            self.api.max_prompt_bytes,
            self.api.max_batch_inputs,
        )
        .map_err(Problem::invalid)?;

        let t = Instant::now();
        let decision = self.limiter.check(&caller.sub, &policy).await;
        timing.add("ratelimit", t);
        match decision {
            Ok(d) => {
                headers.push((
                    HeaderName::from_static("ratelimit"),
                    state_header(&policy, &d),
                ));
                if !d.allowed {
                    metrics.rate_limited = true;
                    return Err(Problem::new(
                        ErrorKind::RateLimited,
                        format!(
                            "rate limit of {} requests per {} s reached",
                            policy.limit,
                            policy.window.as_secs()
                        ),
                    )
                    .retry_after(d.reset_secs));
                }
            }
            Err(e) if self.limits.fail_open => {
                tracing::warn!(error = %e, caller = %caller.sub, "rate-limit store unavailable; failing open");
                metrics.fail_open = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "rate-limit store unavailable; failing closed");
                return Err(Problem::new(
                    ErrorKind::Unavailable,
                    "rate limiting is temporarily unavailable; retry shortly",
                )
                .retry_after(1));
            }
        }

        let t = Instant::now();
        let body = match validated {
            Validated::Single(mut message) => {
                message.request_id = request_id.to_string();
                let answer = self.worker.predict(message, request_id).await;
                timing.add("worker", t);
                let r = answer.map_err(|e| worker_problem(&e))?;
                metrics.predictions = 1;
                json!({
                    "model_name": r.model_name, "model_version": r.model_version,
                    "label": r.label, "probability": r.probability, "scores": scores(&r),
                    "latency_ms": r.latency_ms, "request_id": request_id,
                })
            }
            Validated::Batch(mut message) => {
                message.request_id = request_id.to_string();
                let answer = self.worker.predict_batch(message, request_id).await;
                timing.add("worker", t);
                let r = answer.map_err(|e| worker_problem(&e))?;
                metrics.predictions = r.results.len() as u32;
                let results: Vec<Value> = r
                    .results
                    .iter()
                    .map(|p| json!({"label": p.label, "probability": p.probability, "scores": scores(p)}))
                    .collect();
                json!({
                    "model_name": r.model_name, "model_version": r.model_version,
                    "results": results, "latency_ms": r.latency_ms, "request_id": request_id,
                })
            }
        };
        Ok(json_response(200, &body))
    }
}

/// `GET /v1/models` and `GET /v1/models/{name}`.
pub struct ModelsHandler<W> {
    /// Token verification (any valid token; `model:` scopes filter the list).
    pub auth: Arc<Authenticator>,
    /// Worker client.
    pub worker: W,
    /// Cached catalogue.
    pub catalog: Catalog,
}

impl ModelsHandler<GrpcWorker> {
    /// From the environment: the cold-start path.
    pub async fn from_env() -> anyhow::Result<Self> {
        let api = ApiConfig::from_env()?;
        Ok(Self {
            auth: Arc::new(Authenticator::new(AuthConfig::from_env()?).await?),
            worker: GrpcWorker::connect(WorkerConfig::from_env()?).await?,
            catalog: Catalog::new(api.catalog_ttl),
        })
    }
}

/// The `{name}` of `/v1/models/{name}`, from API Gateway's path parameters or the path.
fn model_name_in_path(req: &Request) -> Option<String> {
    if let Some(name) = req
        .path_parameters_ref()
        .and_then(|p| p.first("name"))
        .filter(|n| !n.is_empty())
    {
        return Some(name.to_string());
    }
    let path = req.uri().path();
    let rest = &path[path.find("/models/")? + "/models/".len()..];
    let rest = rest.trim_end_matches('/');
    (!rest.is_empty()).then(|| rest.to_string())
}

impl<W: Worker> ModelsHandler<W> {
    /// Answers one request.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let started = Instant::now();
        let request_id = request_id(&req);
        let span = tracing::info_span!("request", function = "models", request_id = %request_id);
        let response = match self.run(&req).instrument(span).await {
            Ok(r) => r,
            Err(p) => p.into_response(&request_id),
        };
        let response = finish(response, &request_id, Vec::new());
        RequestMetrics {
            function: "models",
            status: response.status().as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            request_id,
            ..Default::default()
        }
        .emit();
        response
    }

    async fn run(&self, req: &Request) -> Result<Response<Body>, Problem> {
        if req.method() != http::Method::GET {
            return Err(method_not_allowed("GET"));
        }
        let caller = authenticate(&self.auth, req).await?;
        let models = self
            .catalog
            .models(&self.worker)
            .await
            .map_err(|e| worker_problem(&e))?;
        let visible = models.iter().filter(|m| caller.may_use_model(&m.name));
        let mut response = match model_name_in_path(req) {
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

/// `GET /healthz` (no auth).
pub struct HealthHandler<W> {
    /// Worker client.
    pub worker: W,
}

impl HealthHandler<GrpcWorker> {
    /// From the environment: the cold-start path.
    pub async fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            worker: GrpcWorker::connect(WorkerConfig::from_env()?).await?,
        })
    }
}

impl<W: Worker> HealthHandler<W> {
    /// 200 when a worker answers SERVING, 503 otherwise.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let request_id = request_id(&req);
        let response = if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            method_not_allowed("GET").into_response(&request_id)
        } else {
            match self.worker.serving().await {
                Ok(true) => json_response(200, &json!({"status": "ok", "worker": "SERVING"})),
                Ok(false) => {
                    Problem::new(ErrorKind::Unavailable, "the model worker is not serving")
                        .retry_after(5)
                        .into_response(&request_id)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "health check failed");
                    Problem::new(ErrorKind::Unavailable, "the model worker cannot be reached")
                        .retry_after(5)
                        .into_response(&request_id)
                }
            }
        };
        let mut response = finish(response, &request_id, Vec::new());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// All three handlers behind one router: what API Gateway does in AWS, done in-process
/// for local serving and tests.
pub struct Gateway<L, W> {
    /// `POST /v1/predict`.
    pub predict: PredictHandler<L, W>,
    /// `GET /v1/models[/{name}]`.
    pub models: ModelsHandler<W>,
    /// `GET /healthz`.
    pub health: HealthHandler<W>,
}

impl<L: RateLimiter, W: Worker> Gateway<L, W> {
    /// Routes by path like the HTTP API's routes in `template.yaml`.
    pub async fn route(&self, req: Request) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        match path.as_str() {
            "/v1/predict" => self.predict.handle(req).await,
            "/healthz" => self.health.handle(req).await,
            p if p == "/v1/models" || p.starts_with("/v1/models/") => self.models.handle(req).await,
            _ => {
                let id = request_id(&req);
                finish(
                    Problem::new(ErrorKind::NotFound, "no such route").into_response(&id),
                    &id,
                    Vec::new(),
                )
            }
        }
    }
}
