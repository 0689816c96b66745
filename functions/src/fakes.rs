//! In-memory stand-ins for the traits the handlers are generic over, for unit tests of
//! the handlers' own logic (the full path runs against real parts in `tools/tests`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_proto::pb::{
    LabelScore, ModelInfo, ModelKind, PredictBatchRequest, PredictBatchResponse, PredictRequest,
    PredictResponse,
};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::config::{ApiConfig, AuthConfig, JwksSource, LimiterBackend, RateLimitConfig};
use crate::ratelimit::{Decision, MemoryLimiter, Policy, RateLimiter, StoreUnavailable};
use crate::routes::{App, Health, Models, Predict};
use crate::worker::{Worker, WorkerError};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "inferencehub-test";

/// A worker with the two demo models' signatures that answers from a script: the next
/// queued error if any, else a fixed prediction. It counts the predictions it was asked for.
#[derive(Default)]
pub struct FakeWorker {
    pub errors: Mutex<Vec<WorkerError>>,
    pub calls: AtomicUsize,
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
    async fn predict(
        &self,
        request: PredictRequest,
        _request_id: &str,
    ) -> Result<PredictResponse, WorkerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.next_error() {
            Some(e) => Err(e),
            None => Ok(answer(&request.model_name)),
        }
    }

    async fn predict_batch(
        &self,
        request: PredictBatchRequest,
        _request_id: &str,
    ) -> Result<PredictBatchResponse, WorkerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
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

/// A limiter whose store is down, or an in-memory one.
pub enum FakeLimiter {
    Memory(MemoryLimiter),
    /// Times out (a transient failure).
    Down,
    /// Answers, but refuses the write (throttled, say).
    Refusing,
}

impl RateLimiter for FakeLimiter {
    async fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> Result<Decision, StoreUnavailable> {
        match self {
            Self::Memory(m) => m.check(caller, policy, cost).await,
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
        let auth = Arc::new(Authenticator::with_jwks(
            AuthConfig::new(ISSUER, AUDIENCE, JwksSource::File("unused".into())),
            &set,
        ));
        let worker = Arc::new(worker);
        let api = ApiConfig::default();
        let limits = RateLimitConfig {
            backend: LimiterBackend::Memory,
            table: String::new(),
            default_limit: limit,
            tiers: Default::default(),
            window: Duration::from_secs(60),
            fail_open,
            timeout: Duration::from_millis(100),
        };
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
                catalog: Catalog::new(Duration::from_secs(60)),
            },
            health: Health {
                worker: worker.clone(),
            },
        };
        Self { app, worker, key }
    }

    pub fn with_worker(worker: FakeWorker) -> Self {
        Self::new(
            worker,
            FakeLimiter::Memory(MemoryLimiter::default()),
            100,
            false,
        )
    }

    /// A healthy fake worker and an in-memory limiter of `limit` inputs per window.
    pub fn with_limit(limit: u32) -> Self {
        Self::new(
            FakeWorker::default(),
            FakeLimiter::Memory(MemoryLimiter::default()),
            limit,
            false,
        )
    }

    pub fn token(&self, scope: &str) -> String {
        self.key
            .sign(&claims(ISSUER, AUDIENCE, "alice", scope, 300, None))
            .unwrap()
    }
}
