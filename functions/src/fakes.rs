//! In-memory stand-ins for the traits the handlers are generic over, for unit tests of
//! the handlers' own logic (the full path runs against real parts in `tools/tests`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_proto::pb::{
    LabelScore, ModelInfo, ModelKind, PredictBatchRequest, PredictBatchResponse, PredictResponse,
};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;

use crate::app::App;
use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::config::{PredictConfig, from_vars};
use crate::ratelimit::{Decision, MemoryLimiter, Policy, RateLimiter, StoreUnavailable};
use crate::routes::{Health, Models, Predict};
use crate::worker::{Worker, WorkerError};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "inferencehub-test";

/// A worker with the two demo models' signatures that answers from a script: the next
/// queued error if any, else a fixed prediction. It keeps every call it was sent.
#[derive(Default)]
pub struct FakeWorker {
    pub errors: Mutex<Vec<WorkerError>>,
    pub calls: AtomicUsize,
    pub sent: Mutex<Vec<PredictBatchRequest>>,
    pub down: bool,
}

impl FakeWorker {
    pub fn failing(error: WorkerError) -> Self {
        Self {
            errors: Mutex::new(vec![error]),
            ..Self::default()
        }
    }

    fn next_error(&self) -> Option<WorkerError> {
        self.errors.lock().unwrap().pop()
    }
}

fn answer(model: &str) -> PredictResponse {
    PredictResponse {
        probability: 0.9,
        label: "positive".into(),
        latency_ms: 1.0,
        model_name: model.into(),
        model_version: "fake".into(),
        scores: vec![LabelScore {
            label: "positive".into(),
            probability: 0.9,
        }],
        ..Default::default()
    }
}

impl Worker for FakeWorker {
    async fn predict_batch(
        &self,
        request: PredictBatchRequest,
        _request_id: &str,
    ) -> Result<PredictBatchResponse, WorkerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sent.lock().unwrap().push(request.clone());
        if let Some(e) = self.next_error() {
            return Err(e);
        }
        let n = request.prompts.len() + request.rows.len();
        Ok(PredictBatchResponse {
            results: (0..n).map(|_| answer(&request.model_name)).collect(),
            model_name: request.model_name,
            ..Default::default()
        })
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, WorkerError> {
        if self.down {
            return Err(WorkerError::new(
                tonic::Code::Unavailable,
                "connection refused",
            ));
        }
        Ok(vec![
            ModelInfo {
                name: "iris".into(),
                kind: ModelKind::Tabular as i32,
                feature_count: 4,
                labels: vec!["setosa".into(), "versicolor".into(), "virginica".into()],
                ..Default::default()
            },
            ModelInfo {
                name: "sentiment".into(),
                kind: ModelKind::Text as i32,
                max_prompt_bytes: 1000,
                labels: vec!["negative".into(), "positive".into()],
                ..Default::default()
            },
        ])
    }

    async fn serving(&self) -> Result<bool, WorkerError> {
        if self.down {
            return Err(WorkerError::new(
                tonic::Code::Unavailable,
                "connection refused",
            ));
        }
        Ok(true)
    }
}

/// A limiter whose store is down, or an in-memory one that keeps every charge.
pub enum FakeLimiter {
    Memory(MemoryLimiter, Mutex<Vec<(String, u32)>>),
    /// Times out (a transient failure).
    Down,
    /// Answers, but refuses the write (throttled, say).
    Refusing,
}

impl FakeLimiter {
    /// An in-memory limiter.
    pub fn memory() -> Self {
        Self::Memory(MemoryLimiter::default(), Mutex::default())
    }

    /// Every charge so far: caller and cost.
    pub fn charges(&self) -> Vec<(String, u32)> {
        match self {
            Self::Memory(_, charges) => charges.lock().unwrap().clone(),
            _ => Vec::new(),
        }
    }
}

impl RateLimiter for FakeLimiter {
    async fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> Result<Decision, StoreUnavailable> {
        match self {
            Self::Memory(m, charges) => {
                charges.lock().unwrap().push((caller.to_string(), cost));
                m.check(caller, policy, cost).await
            }
            Self::Down => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err(StoreUnavailable::transient("timed out"))
            }
            Self::Refusing => Err(StoreUnavailable::refused(
                "ProvisionedThroughputExceededException",
            )),
        }
    }
}

/// An app over fakes, and the key its tokens are signed with.
pub struct TestApp {
    pub app: App<FakeLimiter, Arc<FakeWorker>>,
    pub worker: Arc<FakeWorker>,
    pub key: SigningKey,
}

impl TestApp {
    pub fn new(worker: FakeWorker, limiter: FakeLimiter, limit: u32, fail_open: bool) -> Self {
        let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
        let set: JwkSet = serde_json::from_value(jwks(&[&key])).unwrap();
        let limit = limit.to_string();
        let config: PredictConfig = from_vars(&[
            ("IHUB_GATEWAY_JWT_ISSUER", ISSUER),
            ("IHUB_GATEWAY_JWT_AUDIENCE", AUDIENCE),
            ("IHUB_GATEWAY_JWKS_FILE", "unused"),
            ("IHUB_GATEWAY_WORKER_ADDRS", "unused:1"),
            ("IHUB_GATEWAY_RATE_LIMIT_BACKEND", "memory"),
            ("IHUB_GATEWAY_RATE_LIMIT_DEFAULT", &limit),
            ("IHUB_GATEWAY_RATE_LIMIT_FAIL_OPEN", &fail_open.to_string()),
            ("IHUB_GATEWAY_RATE_LIMIT_TIMEOUT", "100ms"),
        ])
        .unwrap();
        let auth = Arc::new(Authenticator::with_jwks(config.auth, &set));
        let worker = Arc::new(worker);
        let (api, limits) = (config.api, config.limits);
        let api_ttl = api.catalog_ttl;
        let app = App {
            predict: Predict {
                auth: auth.clone(),
                limiter,
                worker: worker.clone(),
                catalog: Catalog::new(api.catalog_ttl),
                limits,
                api,
            },
            models: Models {
                auth,
                worker: worker.clone(),
                catalog: Catalog::new(api_ttl),
            },
            health: Health {
                worker: worker.clone(),
            },
        };
        Self { app, worker, key }
    }

    pub fn with_worker(worker: FakeWorker) -> Self {
        Self::new(worker, FakeLimiter::memory(), 100, false)
    }

    /// A healthy fake worker and an in-memory limiter of `limit` inputs per window.
    pub fn with_limit(limit: u32) -> Self {
        Self::new(FakeWorker::default(), FakeLimiter::memory(), limit, false)
    }

    pub fn token(&self, scope: &str) -> String {
        self.key
            .sign(&claims(ISSUER, AUDIENCE, "alice", scope, 300, None))
            .unwrap()
    }
}
