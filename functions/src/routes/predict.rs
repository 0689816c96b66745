//! The `predict` function: the one inference path every protocol goes through.
//!
//! authorize (token, `predict` scope) -> decode (the protocol's codec) -> authorize the
//! model -> validate (catalogue, version, the protocol's framing, the model's signature,
//! the batch size) -> cost (its inputs) -> limit -> the worker's batch call -> encode.
//! Invalid requests never reach DynamoDB or the worker, a client's bug does not eat its
//! quota, and unauthenticated requests are refused before any of it.

use std::sync::Arc;

use http::HeaderName;
use http::header;
use inferencehub_proto::pb::{FeatureRow, ModelInfo, PredictBatchRequest};
use inferencehub_proto::{ErrorKind, InputField, InputSignature};
use lambda_http::{Body, Request, Response};

use crate::auth::{Authenticator, Caller, authorization};
use crate::catalog::{Catalog, Missing};
use crate::command::{self, Bound, Command, Invalid, Place};
use crate::config::{ApiConfig, LimiterBackend, PredictConfig, RateLimitConfig};
use crate::layers::{Context, Handler};
use crate::pools::Pools;
use crate::problem::{NamePlace, Problem};
use crate::protocol::openai::OpenAi;
use crate::protocol::v1::V1;
use crate::protocol::v2::V2;
use crate::protocol::{Answer, Protocol};
use crate::ratelimit::{
    AnyLimiter, Decision, DynamoLimiter, MemoryLimiter, Policy, RateLimiter, StoreUnavailable,
    policy_header, state_header,
};
use crate::router::{Function, Matched, PredictOp};
use crate::worker::Worker;

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

impl Predict<AnyLimiter, Pools> {
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
            worker: Pools::connect(worker).await?,
            catalog: Catalog::new(api.catalog_ttl),
            limits,
            api,
        })
    }
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

/// `[A-Za-z0-9._-]{1,64}`: what a model folder may be called. Anything else is refused
/// before the name reaches a metric dimension, a log line or a `WWW-Authenticate` header.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl<L: RateLimiter, W: Worker> Predict<L, W> {
    /// The one inference path, for any protocol.
    async fn infer<P: Protocol>(
        &self,
        req: &Request,
        route: &Matched,
        cx: &mut Context,
    ) -> Result<Response<Body>, Problem> {
        let caller = cx
            .time("auth", self.auth.authenticate(authorization(req)))
            .await?;
        if !caller.has_scope("predict") {
            return Err(Problem::forbidden(
                "the token lacks the `predict` scope",
                "predict",
            ));
        }
        let policy = self.policy(&caller);
        cx.header(
            HeaderName::from_static("ratelimit-policy"),
            policy_header(&policy),
        );
        check_size(req, self.api.max_body_bytes)?;
        // The metric dimension names only models the catalogue knows: a caller must not
        // mint CloudWatch metrics (billed per metric) with made-up names.
        cx.metrics.model = Some(UNKNOWN_MODEL.into());
        let (protocol, command) = P::decode(req, route)?;
        let model = self.model(&command, &caller, &protocol).await?;
        cx.metrics.model = Some(model.name.clone());
        let invalid = |errors| Problem::at(errors, &protocol);
        protocol.check_model(&model).map_err(invalid)?;
        command::check_outputs(command.outputs.as_deref(), &model).map_err(invalid)?;
        let inputs = command.inputs.bind(&model).map_err(invalid)?;
        let signature = gateway_signature(&model, self.api.max_prompt_bytes)?;
        command::validate(&inputs, &model, signature, self.api.max_batch_inputs)
            .map_err(invalid)?;
        command::check_answer_size(
            &model,
            command.outputs.as_deref(),
            inputs.len(),
            self.api.max_answer_bytes,
        )
        .map_err(invalid)?;
        // A request costs its number of inputs: a batch of 32 uses what 32 single calls do.
        let cost = inputs.len() as u32;
        let decision = cx
            .time("ratelimit", self.limiter.check(&caller.sub, &policy, cost))
            .await;
        self.admit(decision, &policy, &caller, cx)?;
        let request_id = cx.request_id().to_string();
        let mut message = batch_request(&model.name, inputs, signature, &request_id);
        message.outputs = command::named_outputs(command.outputs.as_deref(), &model);
        message.refuse_truncation = command.refuse_truncation;
        // A version the caller named, or the canary split picked, computes it; otherwise the
        // workers' default does, so a new version that took over since the catalogue was
        // read costs no request (the worker checks the inputs against it again).
        let split = command.version.is_none() && model.traffic_weight > 0;
        if command.version.is_some() || split {
            message.model_version = model.version.clone();
        }
        let retry = split.then(|| PredictBatchRequest {
            model_version: String::new(),
            ..message.clone()
        });
        let mut batch = cx
            .time("worker", self.worker.predict_batch(message, &request_id))
            .await;
        // The split's version left the workers since the catalogue was read: the default
        // answers instead.
        if let (Err(e), Some(retry)) = (&batch, retry)
            && e.code == tonic::Code::NotFound
        {
            batch = cx
                .time("worker", self.worker.predict_batch(retry, &request_id))
                .await;
        }
        let batch = batch.map_err(|e| Problem::from_worker(&e, &protocol))?;
        cx.metrics.predictions = batch.results.len() as u32;
        cx.metrics.version = Some(batch.model_version.clone());
        Ok(protocol.encode(Answer {
            model: &model,
            batch,
            request_id: &request_id,
        }))
    }

    /// The model `command` names, if the caller may use it and the catalogue holds it (in
    /// the version named, when one is).
    async fn model(
        &self,
        command: &Command,
        caller: &Caller,
        protocol: &impl NamePlace,
    ) -> Result<ModelInfo, Problem> {
        if !is_model_name(&command.model) {
            return Err(Problem::at(
                vec![Invalid::new(
                    Place::Model,
                    "must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
                )],
                protocol,
            ));
        }
        if !caller.may_use_model(&command.model) {
            return Err(Problem::forbidden(
                format!("this token may not use model {:?}", command.model),
                &format!("model:{}", command.model),
            ));
        }
        let found = self
            .catalog
            .model(
                &self.worker,
                &command.model,
                command.version.as_deref(),
                &caller.sub,
            )
            .await
            .map_err(|e| Problem::from_worker(&e, protocol))?;
        match found {
            Ok(model) => Ok(model),
            Err(Missing::Model) => Err(Problem::no_model(
                &command.model,
                Some(protocol.name(&Place::Model)),
            )),
            Err(Missing::Version(served)) => Err(Problem::new(
                ErrorKind::NotFound,
                format!(
                    "model {:?} has no version {:?}; it serves {}",
                    command.model,
                    command
                        .version
                        .as_deref()
                        .unwrap_or_default()
                        .chars()
                        .take(64)
                        .collect::<String>(),
                    served.join(", ")
                ),
            )),
        }
    }

    /// The caller's rate-limit policy, from its tier.
    fn policy(&self, caller: &Caller) -> Policy {
        let (tier, limit) = self.limits.limit_for(caller.tier.as_deref());
        Policy {
            name: tier,
            limit,
            window: self.limits.window,
        }
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
}

/// The worker call for validated `inputs` of model `name`: its texts, its feature rows or
/// its named tensors.
fn batch_request(
    name: &str,
    inputs: Bound,
    signature: InputSignature,
    request_id: &str,
) -> PredictBatchRequest {
    let mut message = PredictBatchRequest {
        model_name: name.to_string(),
        request_id: request_id.to_string(),
        ..Default::default()
    };
    let inputs = match inputs {
        Bound::Tensors(tensors) => {
            message.inputs = tensors;
            return message;
        }
        Bound::Fields(inputs) => inputs,
    };
    match signature.field() {
        InputField::Prompt => {
            message.prompts = inputs.into_iter().filter_map(|i| i.prompt).collect();
        }
        InputField::Features => {
            message.rows = inputs
                .into_iter()
                .filter_map(|i| i.features)
                .map(|features| FeatureRow { features })
                .collect();
        }
    }
    message
}

/// The checks the gateway runs for `model`: its advertised signature, with prompts capped
/// by the gateway's own `max_prompt_bytes` as well.
pub fn gateway_signature(
    model: &ModelInfo,
    max_prompt_bytes: usize,
) -> Result<InputSignature, Problem> {
    let mut signature = InputSignature::from_info(model).ok_or_else(|| {
        tracing::error!(model = %model.name, "the catalogue gives this model no input signature");
        Problem::new(
            ErrorKind::BadGateway,
            "this model has no usable input signature",
        )
    })?;
    if let InputSignature::Text {
        max_prompt_bytes: worker_cap,
    } = &mut signature
    {
        *worker_cap = match *worker_cap {
            0 => max_prompt_bytes,
            cap => cap.min(max_prompt_bytes),
        };
    }
    Ok(signature)
}

impl<L: RateLimiter, W: Worker> Handler for Predict<L, W> {
    const FUNCTION: Function = Function::Predict;

    type Op = PredictOp;

    async fn handle(
        &self,
        op: PredictOp,
        req: Request,
        route: &Matched,
        cx: &mut Context,
    ) -> Result<Response<Body>, Problem> {
        match op {
            PredictOp::V1 => self.infer::<V1>(&req, route, cx).await,
            PredictOp::V2 => self.infer::<V2>(&req, route, cx).await,
            // OpenAI's clients read their error object from every refusal.
            PredictOp::Embeddings => self
                .infer::<OpenAi>(&req, route, cx)
                .await
                .map_err(Problem::openai),
        }
    }
}
