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

    /// Model `name` in `version`; without one, the version the model's canary split gives
    /// `caller` (else its default version).
    pub async fn model<W: Worker>(
        &self,
        worker: &W,
        name: &str,
        version: Option<&str>,
        caller: &str,
    ) -> Result<Result<ModelInfo, Missing>, WorkerError> {
        let models = self.models(worker).await?;
        Ok(match version {
            None => split(&models, name, caller).map_or_else(|| resolve(&models, name, None), Ok),
            Some(_) => resolve(&models, name, version),
        }
        .cloned())
    }
}

/// Why a catalogue has no model for a name and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No model of that name.
    Model,
    /// The model, but not that version: the versions it serves.
    Version(Vec<String>),
}

/// Whether a catalogue entry is a version that serves (not one that failed to load).
pub fn is_ready(model: &ModelInfo) -> bool {
    model.state.is_empty() || model.state == "READY"
}

/// The serving versions of model `name` the catalogue lists, in its order (oldest first).
pub fn versions_of(models: &[ModelInfo], name: &str) -> Vec<String> {
    models
        .iter()
        .filter(|m| m.name == name && is_ready(m))
        .map(|m| m.version.clone())
        .collect()
}

/// Whether `model` is what requests without a version get: the entry marked default, or a
/// model's only (last) entry where a worker marks none.
pub fn is_default(model: &ModelInfo, models: &[ModelInfo]) -> bool {
    if !is_ready(model) {
        return false;
    }
    let same: Vec<&ModelInfo> = models
        .iter()
        .filter(|m| m.name == model.name && is_ready(m))
        .collect();
    if same.iter().any(|m| m.default_version) {
        model.default_version
    } else {
        same.last().is_some_and(|m| m.version == model.version)
    }
}

/// Model `name` in `version`, or its default version.
pub fn resolve<'a>(
    models: &'a [ModelInfo],
    name: &str,
    version: Option<&str>,
) -> Result<&'a ModelInfo, Missing> {
    let mut same = models
        .iter()
        .filter(|m| m.name == name && is_ready(m))
        .peekable();
    if same.peek().is_none() {
        return Err(Missing::Model);
    }
    match version {
        Some(v) => same
            .find(|m| m.version == v)
            .ok_or_else(|| Missing::Version(versions_of(models, name))),
        None => models
            .iter()
            .find(|m| m.name == name && is_default(m, models))
            .ok_or(Missing::Model),
    }
}

/// The version of model `name` its canary split gives `caller`, if it has a split: a hash
/// of the caller and the model picks a point in the weights, so one caller keeps one
/// version while the split holds.
pub fn split<'a>(models: &'a [ModelInfo], name: &str, caller: &str) -> Option<&'a ModelInfo> {
    use sha2::{Digest, Sha256};
    let weighted: Vec<&ModelInfo> = models
        .iter()
        .filter(|m| m.name == name && is_ready(m) && m.traffic_weight > 0)
        .collect();
    let total: u64 = weighted.iter().map(|m| u64::from(m.traffic_weight)).sum();
    if total == 0 {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(caller.as_bytes())
        .finalize();
    let mut point = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default()) % total;
    weighted.into_iter().find(|m| {
        let w = u64::from(m.traffic_weight);
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_sends_each_caller_to_one_version_in_proportion() {
        let entry = |version: &str, traffic_weight| ModelInfo {
            name: "forest".into(),
            version: version.into(),
            traffic_weight,
            default_version: version == "2",
            ..Default::default()
        };
        let models = vec![entry("1", 90), entry("2", 10)];
        let callers = 2_000;
        let on_2 = (0..callers)
            .filter(|i| {
                split(&models, "forest", &format!("caller-{i}"))
                    .unwrap()
                    .version
                    == "2"
            })
            .count();
        let share = on_2 as f64 * 100.0 / callers as f64;
        assert!((share - 10.0).abs() <= 3.0, "{share:.1}% on version 2");
        for i in 0..50 {
            let caller = format!("caller-{i}");
            let first = &split(&models, "forest", &caller).unwrap().version;
            assert_eq!(&split(&models, "forest", &caller).unwrap().version, first);
        }
        // Without weights there is no split: the default serves.
        assert!(split(&[entry("1", 0)], "forest", "a").is_none());
    }

    #[test]
    fn a_version_is_found_by_name_and_the_default_by_its_mark() {
        let entry = |version: &str, default_version| ModelInfo {
            name: "forest".into(),
            version: version.into(),
            default_version,
            ..Default::default()
        };
        let models = vec![entry("1", false), entry("2", true)];
        assert_eq!(resolve(&models, "forest", None).unwrap().version, "2");
        assert_eq!(resolve(&models, "forest", Some("1")).unwrap().version, "1");
        assert_eq!(
            resolve(&models, "forest", Some("3")),
            Err(Missing::Version(vec!["1".into(), "2".into()]))
        );
        assert_eq!(resolve(&models, "other", None), Err(Missing::Model));
        // A worker that marks no default: its one entry is.
        let old = vec![entry("abc", false)];
        assert_eq!(resolve(&old, "forest", None).unwrap().version, "abc");
        // A version that failed to load is never routed to.
        let broken = ModelInfo {
            state: "UNAVAILABLE".into(),
            ..entry("3", false)
        };
        let models = vec![entry("1", true), broken];
        assert!(resolve(&models, "forest", Some("3")).is_err());
        assert_eq!(versions_of(&models, "forest"), ["1"]);
    }
}
