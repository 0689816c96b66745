//! The model catalogue (`ListModels`), cached per cold start with a short TTL. A failed
//! refresh keeps serving the previous catalogue (logged) rather than failing requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferencehub_proto::pb::ModelInfo;
use tokio::sync::Mutex;

use crate::worker::{Worker, WorkerError};

/// After a failed refresh with nothing cached, callers get the same error at once for this
/// long instead of each waiting on an unreachable worker in turn.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Cached `ListModels` answer.
pub struct Catalog {
    ttl: Duration,
    cache: Mutex<Option<(Instant, Arc<Vec<ModelInfo>>)>>,
    last_failure: Mutex<Option<(Instant, WorkerError)>>,
}

impl Catalog {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cache: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    /// Every model, refreshed from `worker` when older than the TTL. Concurrent callers
    /// wait for one refresh instead of each asking the worker.
    pub async fn models<W: Worker>(&self, worker: &W) -> Result<Arc<Vec<ModelInfo>>, WorkerError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, models)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(models.clone());
        }
        if cache.is_none()
            && let Some((at, e)) = self.last_failure.lock().await.as_ref()
            && at.elapsed() < FAILURE_HOLD
        {
            return Err(e.clone());
        }
        match worker.list_models().await {
            Ok(models) => {
                let models = Arc::new(models);
                *cache = Some((Instant::now(), models.clone()));
                Ok(models)
            }
            Err(e) => match cache.as_ref() {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, "catalogue refresh failed; serving the cached one");
                    Ok(stale.clone())
                }
                None => {
                    *self.last_failure.lock().await = Some((Instant::now(), e.clone()));
                    Err(e)
                }
            },
        }
    }

    /// One model by name.
    pub async fn model<W: Worker>(
        &self,
        worker: &W,
        name: &str,
    ) -> Result<Option<ModelInfo>, WorkerError> {
        Ok(self
            .models(worker)
            .await?
            .iter()
            .find(|m| m.name == name)
            .cloned())
    }
}
