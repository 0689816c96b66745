//! `POST /v1/predict` and the Open Inference Protocol's `POST /v2/models/{name}[/versions/
//! {version}]/infer`: auth -> body checks and validation (against the cached catalogue) ->
//! rate limit -> worker. Invalid requests never reach DynamoDB or the worker, a client's
//! bug does not eat its quota, and unauthenticated requests are refused before any of it.

use std::sync::Arc;

use http::HeaderName;
use http::header;
use inferencehub_proto::pb::{PredictBatchRequest, PredictResponse};
use inferencehub_proto::{ErrorKind, FieldError};
use lambda_http::{Body, Request, Response};
use serde_json::{Map, Value, json};

use crate::auth::{Authenticator, Caller};
use crate::catalog::Catalog;
use crate::config::{ApiConfig, LimiterBackend, PredictConfig, RateLimitConfig};
use crate::layers::{Context, Handler, json_response};
use crate::problem::Problem;
use crate::ratelimit::{
    AnyLimiter, Decision, DynamoLimiter, MemoryLimiter, Policy, RateLimiter, StoreUnavailable,
    policy_header, state_header,
};
use crate::request::{Validated, gateway_signature, is_model_name, parse, validate};
use crate::routes::{
    Function, V2_INFER, V2_INFER_VERSION, caller, check_version, path_param, pattern_of,
};
use crate::worker::{GrpcWorker, Worker};

/// The predict handler over a rate limiter and a worker client.
pub struct Predict<L, W> {
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

impl Predict<AnyLimiter, GrpcWorker> {
    /// Everything from its settings, connected: the cold-start path.
    pub async fn connect(config: PredictConfig) -> anyhow::Result<Self> {
        let PredictConfig {
            auth,
            limits,
            worker,
            api,
        } = config;
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
            auth: Arc::new(Authenticator::new(auth).await?),
            limiter,
            worker: GrpcWorker::connect(worker).await?,
            catalog: Catalog::new(api.catalog_ttl),
            limits,
            api,
        })
    }
}

/// One answer's prediction: `label`, `probability` and `scores` from a classifier, `values`
/// from a regressor (whose answers carry no label).
fn prediction(r: &PredictResponse) -> Map<String, Value> {
    let mut out = Map::new();
    if r.values.is_empty() {
        let scores: Map<String, Value> = r
            .scores
            .iter()
            .map(|s| (s.label.clone(), json!(s.probability)))
            .collect();
        out.insert("label".into(), json!(r.label));
        out.insert("probability".into(), json!(r.probability));
        out.insert("scores".into(), Value::Object(scores));
    } else {
        out.insert("values".into(), json!(r.values));
    }
    out
}

/// The `Model` metric dimension of requests for no model the catalogue knows.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// 413 when the declared or actual body is larger than `max` bytes.
fn check_size(req: &Request, max: usize) -> Result<(), Problem> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) || req.body().len() > max {
        return Err(Problem::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than {max} bytes"),
        ));
    }
    Ok(())
}

impl<L: RateLimiter, W: Worker> Predict<L, W> {
    /// Parses and validates the body against the model the caller may use.
    async fn validated(
        &self,
        req: &Request,
        caller: &Caller,
        cx: &mut Context,
    ) -> Result<Validated, Problem> {
        check_size(req, self.api.max_body_bytes)?;
        let parsed = parse(req.body()).map_err(|e| Problem::invalid(vec![e]))?;
        // The metric dimension names only models the catalogue knows: a caller must not
        // mint CloudWatch metrics (billed per metric) with made-up names.
        cx.metrics.model = Some(UNKNOWN_MODEL.into());
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
            .map_err(|e| Problem::from_worker(&e))?
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
        cx.metrics.model = Some(model.name.clone());
        validate(
            parsed,
            &model,
            self.api.max_prompt_bytes,
            self.api.max_batch_inputs,
        )
        .map_err(Problem::invalid)
    }

    /// Lets the request through, or answers 429 / 503 (fail closed) for it.
    fn admit(
        &self,
        decision: Result<Decision, StoreUnavailable>,
        policy: &Policy,
        caller: &Caller,
        cx: &mut Context,
    ) -> Result<(), Problem> {
        match decision {
            Ok(d) => {
                cx.header(
                    HeaderName::from_static("ratelimit"),
                    state_header(policy, &d),
                );
                if d.allowed {
                    return Ok(());
                }
                cx.metrics.rate_limited = true;
                Err(Problem::new(
                    ErrorKind::RateLimited,
                    format!(
                        "rate limit of {} inputs per {} s reached (a request costs its inputs)",
                        policy.limit,
                        policy.window.as_secs()
                    ),
                )
                .retry_after(d.reset_secs))
            }
            Err(e) if self.limits.fail_open && e.transient => {
                tracing::warn!(error = %e, caller = %caller.sub, "rate-limit store unavailable; failing open");
                cx.metrics.fail_open = true;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "rate-limit store unavailable; failing closed");
                Err(Problem::new(
                    ErrorKind::Unavailable,
                    "rate limiting is temporarily unavailable; retry shortly",
                )
                .retry_after(1))
            }
        }
    }

    /// The Open Inference Protocol's infer: the same checks, limit and worker call as
    /// `/v1/predict`, in the protocol's JSON or binary form.
    async fn infer(
        &self,
        req: &Request,
        caller: &Caller,
        policy: &Policy,
        cx: &mut Context,
    ) -> Result<Response<Body>, Problem> {
        check_size(req, self.api.max_body_bytes)?;
        cx.metrics.model = Some(UNKNOWN_MODEL.into());
        let name = path_param(req, "name").unwrap_or_default();
        if !is_model_name(&name) {
            return Err(Problem::invalid(vec![FieldError::new(
                "name",
                "a model name is 1 to 64 of A-Z a-z 0-9 . _ -",
            )]));
        }
        if !caller.may_use_model(&name) {
            return Err(Problem::forbidden(
                format!("this token may not use model {name:?}"),
                &format!("model:{name}"),
            ));
        }
        let model = self
            .catalog
            .model(&self.worker, &name)
            .await
            .map_err(|e| Problem::from_worker(&e))?
            .ok_or_else(|| Problem::new(ErrorKind::NotFound, format!("no model named {name:?}")))?;
        check_version(req, &model)?;
        cx.metrics.model = Some(model.name.clone());
        let header = req
            .headers()
            .get(crate::oip::HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("invalid"));
        let request =
            crate::oip::parse_infer(req.body(), header, &model, self.api.max_batch_inputs)
                .map_err(Problem::invalid)?;
        let signature =
            gateway_signature(&model, self.api.max_prompt_bytes).map_err(Problem::invalid)?;
        let errors = signature.check_all(request.tensor.inputs(), |i, _| {
            format!("inputs[0].data[{i}]")
        });
        if !errors.is_empty() {
            return Err(Problem::invalid(errors));
        }
        let cost = request.tensor.len() as u32;
        let decision = cx
            .time("ratelimit", self.limiter.check(&caller.sub, policy, cost))
            .await;
        self.admit(decision, policy, caller, cx)?;
        let request_id = cx.request_id().to_string();
        let (prompts, rows) = request.tensor.clone().into_batch();
        let message = PredictBatchRequest {
            model_name: model.name.clone(),
            prompts,
            rows,
            request_id: request_id.clone(),
        };
        let answer = cx
            .time("worker", self.worker.predict_batch(message, &request_id))
            .await
            .map_err(|e| Problem::from_worker(&e))?;
        cx.metrics.predictions = cost;
        let (body, binary) = crate::oip::infer_response(&model, &request, &answer);
        if binary.is_empty() {
            return Ok(json_response(200, &body));
        }
        let json = body.to_string();
        let length = json.len();
        let mut bytes = json.into_bytes();
        bytes.extend_from_slice(&binary);
        let mut response = Response::new(Body::Binary(bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        response
            .headers_mut()
            .insert(crate::oip::HEADER_LENGTH, http::HeaderValue::from(length));
        Ok(response)
    }

    /// Calls the worker and shapes its answer.
    async fn predict(
        &self,
        validated: Validated,
        request_id: &str,
    ) -> Result<(Value, u32), Problem> {
        match validated {
            Validated::Single(mut message) => {
                message.request_id = request_id.to_string();
                let r = self
                    .worker
                    .predict(message, request_id)
                    .await
                    .map_err(|e| Problem::from_worker(&e))?;
                let mut body = prediction(&r);
                body.insert("model_name".into(), json!(r.model_name));
                body.insert("model_version".into(), json!(r.model_version));
                body.insert("latency_ms".into(), json!(r.latency_ms));
                body.insert("request_id".into(), json!(request_id));
                Ok((Value::Object(body), 1))
            }
            Validated::Batch(mut message) => {
                message.request_id = request_id.to_string();
                let r = self
                    .worker
                    .predict_batch(message, request_id)
                    .await
                    .map_err(|e| Problem::from_worker(&e))?;
                let results: Vec<Value> = r
                    .results
                    .iter()
                    .map(|p| Value::Object(prediction(p)))
                    .collect();
                let body = json!({
                    "model_name": r.model_name, "model_version": r.model_version,
                    "results": results, "latency_ms": r.latency_ms, "request_id": request_id,
                });
                Ok((body, r.results.len() as u32))
            }
        }
    }
}

impl<L: RateLimiter, W: Worker> Handler for Predict<L, W> {
    const FUNCTION: Function = Function::Predict;

    async fn handle(&self, req: Request, cx: &mut Context) -> Result<Response<Body>, Problem> {
        let caller = cx.time("auth", caller(&self.auth, &req)).await?;
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
        cx.header(
            HeaderName::from_static("ratelimit-policy"),
            policy_header(&policy),
        );
        if matches!(
            pattern_of(req.uri().path()),
            Some(V2_INFER | V2_INFER_VERSION)
        ) {
            return self.infer(&req, &caller, &policy, cx).await;
        }
        let validated = self.validated(&req, &caller, cx).await?;
        // A request costs its number of inputs: a batch of 32 uses what 32 single calls do.
        let cost = match &validated {
            Validated::Single(_) => 1,
            Validated::Batch(b) => (b.prompts.len() + b.rows.len()) as u32,
        };
        let decision = cx
            .time("ratelimit", self.limiter.check(&caller.sub, &policy, cost))
            .await;
        self.admit(decision, &policy, &caller, cx)?;
        let request_id = cx.request_id().to_string();
        let (body, predictions) = cx
            .time("worker", self.predict(validated, &request_id))
            .await?;
        cx.metrics.predictions = predictions;
        Ok(json_response(200, &body))
    }
}
