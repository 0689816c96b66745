//! Several worker pools behind one gateway: each pool an address list with its own client
//! identity (a GPU pool for the encoders, a CPU pool for tabular models, say). The
//! catalogue is the union of the pools' `ListModels`, and it decides where each model's
//! calls go: to the first pool that lists it. Inside a pool, calls fail over between its
//! workers as with one pool ([`crate::worker`]). A pool that cannot be reached keeps its
//! last listed models in the catalogue (their calls answer 503, not 404), and the other
//! pools' models answer as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use inferencehub_proto::pb::{ModelInfo, PredictBatchRequest, PredictBatchResponse};
use serde::Deserialize;

use crate::config::WorkerConfig;
use crate::worker::{GrpcWorker, Worker, WorkerError};

/// One more pool, as `IHUB_GATEWAY_WORKER_POOLS` names it (a JSON array of these). What it
/// leaves out (TLS material, the server name) is the first pool's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// A name for logs.
    pub name: String,
    /// Its workers' URLs.
    pub addrs: Vec<String>,
    /// CA of its worker certificates (path or PEM text).
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate it presents (path or PEM text).
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Its private key (path or PEM text).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Secrets Manager secret with `ca`, `client_cert` and `client_key`, instead of the
    /// three above.
    #[serde(default)]
    pub tls_secret_id: Option<String>,
    /// The name its worker certificates must be valid for.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// Most pools one gateway holds.
const MAX_POOLS: usize = 16;

/// The pools of `config`: the first from its own addresses and TLS settings, then those of
/// `IHUB_GATEWAY_WORKER_POOLS`, each as a [`WorkerConfig`].
pub fn pool_configs(config: &WorkerConfig) -> anyhow::Result<Vec<(String, WorkerConfig)>> {
    let first = WorkerConfig {
        pools: None,
        ..config.clone()
    };
    let mut configs = vec![("default".to_string(), first.clone())];
    let Some(text) = config.pools.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Ok(configs);
    };
    let specs: Vec<PoolSpec> = serde_json::from_str(text).context(
        "IHUB_GATEWAY_WORKER_POOLS: a JSON array of {\"name\", \"addrs\", and optionally \
         \"tls_ca\", \"tls_cert\", \"tls_key\", \"tls_secret_id\", \"tls_server_name\"}",
    )?;
    anyhow::ensure!(
        specs.len() < MAX_POOLS,
        "IHUB_GATEWAY_WORKER_POOLS: at most {} pools",
        MAX_POOLS - 1
    );
    for spec in specs {
        anyhow::ensure!(
            !spec.addrs.is_empty(),
            "IHUB_GATEWAY_WORKER_POOLS: pool {:?} has no addresses",
            spec.name
        );
        anyhow::ensure!(
            configs.iter().all(|(n, _)| *n != spec.name),
            "IHUB_GATEWAY_WORKER_POOLS: two pools named {:?}",
            spec.name
        );
        let mut pool = WorkerConfig {
            addrs: spec.addrs,
            ..first.clone()
        };
        let own_pems = spec.tls_ca.is_some() || spec.tls_cert.is_some() || spec.tls_key.is_some();
        if own_pems || spec.tls_secret_id.is_some() {
            pool.tls.ca = spec.tls_ca.or(first.tls.ca.clone().filter(|_| own_pems));
            pool.tls.cert = spec.tls_cert;
            pool.tls.key = spec.tls_key;
            pool.tls_secret_id = spec.tls_secret_id;
        }
        if let Some(name) = spec.tls_server_name {
            pool.tls.server_name = name;
        }
        pool.urls()?;
        configs.push((spec.name, pool));
    }
    Ok(configs)
}

/// One pool: its client and the models it listed last.
struct Pool {
    name: String,
    worker: GrpcWorker,
    listed: Mutex<Option<Vec<ModelInfo>>>,
}

/// The worker pools, routing each model to its pool. Cheap to clone (the clones share the
/// connections and the routes).
#[derive(Clone)]
pub struct Pools {
    pools: Arc<Vec<Pool>>,
    /// Which pool serves each model, from the last catalogue.
    routes: Arc<RwLock<HashMap<String, usize>>>,
}

impl Pools {
    /// Connects every pool of `config` (see [`GrpcWorker::connect`]).
    pub async fn connect(config: WorkerConfig) -> anyhow::Result<Self> {
        let mut workers = Vec::new();
        for (name, config) in pool_configs(&config)? {
            let worker = GrpcWorker::connect(config)
                .await
                .with_context(|| format!("worker pool {name:?}"))?;
            workers.push((name, worker));
        }
        Ok(Self::of(workers))
    }

    /// Pools of clients already connected, in routing order.
    pub fn of(workers: Vec<(String, GrpcWorker)>) -> Self {
        Self {
            pools: Arc::new(
                workers
                    .into_iter()
                    .map(|(name, worker)| Pool {
                        name,
                        worker,
                        listed: Mutex::new(None),
                    })
                    .collect(),
            ),
            routes: Arc::default(),
        }
    }

    /// Calls retried on another worker of their pool since the cold start.
    pub fn failovers(&self) -> u64 {
        self.pools.iter().map(|p| p.worker.failovers()).sum()
    }

    /// The pool of `model`: the one whose catalogue listed it, else the first.
    fn pool_of(&self, model: &str) -> &Pool {
        let i = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .copied()
            .unwrap_or(0);
        &self.pools[i.min(self.pools.len() - 1)]
    }
}

/// The union of the pools' catalogues, in pool order: a model listed by two pools is the
/// first one's. With it, each model's pool.
fn merge(lists: &[Option<Vec<ModelInfo>>]) -> (Vec<ModelInfo>, HashMap<String, usize>) {
    let mut routes: HashMap<String, usize> = HashMap::new();
    let mut models = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        for model in list.iter().flatten() {
            if *routes.entry(model.name.clone()).or_insert(i) == i {
                models.push(model.clone());
            }
        }
    }
    (models, routes)
}

impl Worker for Pools {
    async fn predict_batch(
        &self,
        request: PredictBatchRequest,
        request_id: &str,
    ) -> Result<PredictBatchResponse, WorkerError> {
        let pool = self.pool_of(&request.model_name);
        pool.worker.predict_batch(request, request_id).await
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, WorkerError> {
        let answers =
            futures::future::join_all(self.pools.iter().map(|p| p.worker.list_models())).await;
        let mut lists = Vec::with_capacity(self.pools.len());
        let mut first_error = None;
        for (pool, answer) in self.pools.iter().zip(answers) {
            let mut listed = pool.listed.lock().unwrap_or_else(|p| p.into_inner());
            match answer {
                Ok(models) => *listed = Some(models),
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "a worker pool's catalogue could not be read; its last one stays");
                    first_error.get_or_insert(e);
                }
            }
            lists.push(listed.clone());
        }
        if let Some(e) = first_error
            && lists.iter().all(Option::is_none)
        {
            return Err(e);
        }
        let (models, routes) = merge(&lists);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
        Ok(models)
    }

    /// Whether any pool has a worker that answers SERVING (one pool down leaves the other
    /// pools' models answering, so the API is up).
    async fn serving(&self) -> Result<bool, WorkerError> {
        let answers =
            futures::future::join_all(self.pools.iter().map(|p| p.worker.serving())).await;
        let mut first_error = None;
        let mut any = false;
        for (pool, answer) in self.pools.iter().zip(answers) {
            match answer {
                Ok(true) => any = true,
                Ok(false) => tracing::warn!(pool = %pool.name, "a worker pool is not serving"),
                Err(e) => {
                    tracing::warn!(pool = %pool.name, error = %e, "a worker pool is not reachable");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !any => Err(e),
            _ => Ok(any),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: &str) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_model_goes_to_the_first_pool_that_lists_it() {
        let (models, routes) = merge(&[
            Some(vec![info("sentiment", "1"), info("minilm", "1")]),
            None,
            Some(vec![
                info("iris", "1"),
                info("iris", "2"),
                info("sentiment", "9"),
            ]),
        ]);
        let names: Vec<(&str, &str)> = models
            .iter()
            .map(|m| (m.name.as_str(), m.version.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("sentiment", "1"),
                ("minilm", "1"),
                ("iris", "1"),
                ("iris", "2")
            ]
        );
        assert_eq!(routes["sentiment"], 0);
        assert_eq!(routes["iris"], 2);
    }

    #[test]
    fn pools_inherit_what_they_leave_out_and_bad_lists_are_refused() {
        let vars = |pools: &str| {
            crate::config::group_from_vars::<WorkerConfig>(&[
                ("IHUB_GATEWAY_WORKER_ADDRS", "https://gpu:50051"),
                ("IHUB_GATEWAY_WORKER_TLS_CA", "/ca.pem"),
                ("IHUB_GATEWAY_WORKER_TLS_CERT", "/client.pem"),
                ("IHUB_GATEWAY_WORKER_TLS_KEY", "/client.key"),
                ("IHUB_GATEWAY_WORKER_POOLS", pools),
            ])
            .unwrap()
        };
        let configs = pool_configs(&vars(
            r#"[{"name": "cpu", "addrs": ["cpu-1:50051", "cpu-2:50051"]},
                {"name": "own", "addrs": ["https://own:1"], "tls_cert": "/own.pem",
                 "tls_key": "/own.key", "tls_server_name": "own.internal"}]"#,
        ))
        .unwrap();
        let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["default", "cpu", "own"]);
        let (_, cpu) = &configs[1];
        assert_eq!(
            cpu.urls().unwrap(),
            ["https://cpu-1:50051", "https://cpu-2:50051"]
        );
        assert_eq!(cpu.tls.cert.as_deref(), Some("/client.pem".as_ref()));
        let (_, own) = &configs[2];
        assert_eq!(own.tls.cert.as_deref(), Some("/own.pem".as_ref()));
        assert_eq!(own.tls.ca.as_deref(), Some("/ca.pem".as_ref()));
        assert_eq!(own.tls.server_name, "own.internal");

        for bad in [
            "{}",
            r#"[{"name": "x"}]"#,
            r#"[{"name": "x", "addrs": []}]"#,
            r#"[{"name": "x", "addrs": ["http://plain:1"]}]"#,
            r#"[{"name": "default", "addrs": ["a:1"]}]"#,
            r#"[{"name": "x", "addrs": ["a:1"], "tls_passphrase": "no"}]"#,
        ] {
            assert!(pool_configs(&vars(bad)).is_err(), "{bad}");
        }
        assert_eq!(pool_configs(&vars("")).unwrap().len(), 1);
    }
}
