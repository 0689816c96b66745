//! A real local stack for the whole-stack tests: dynalite (a DynamoDB-compatible server), the
//! worker with the demo models over mTLS (certificates generated here), signing keys
//! generated here, and the gateway's handlers served over real HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use inferencehub_devkit::certs::{self, CertPaths, GATEWAY_CLIENT_NAME, HEALTH_CLIENT_NAME};
use inferencehub_devkit::dynamo::{Dynalite, local_client};
use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_functions::app::App;
use inferencehub_functions::auth::Authenticator;
use inferencehub_functions::catalog::Catalog;
use inferencehub_functions::config::{PredictConfig, WorkerConfig, from_vars, group_from_vars};
use inferencehub_functions::pools::Pools;
use inferencehub_functions::ratelimit::DynamoLimiter;
use inferencehub_functions::routes::{Health, Models, Predict};
use inferencehub_proto::settings::WorkerClientTls;
use inferencehub_worker::config::ServeArgs;
use inferencehub_worker::server::{self, RunningWorker};
use jsonwebtoken::Algorithm;

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "inferencehub-test";
pub const TABLE: &str = "rate-limits-test";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Keys: three in the JWKS (one per algorithm) and one that is not.
pub struct Keys {
    pub es: SigningKey,
    pub rs: SigningKey,
    pub ed: SigningKey,
    pub stranger: SigningKey,
    pub jwks_file: PathBuf,
}

impl Keys {
    pub fn new(dir: &Path) -> Keys {
        let es = SigningKey::generate(Algorithm::ES256, "es-1").unwrap();
        let rs = SigningKey::generate(Algorithm::RS256, "rs-1").unwrap();
        let ed = SigningKey::generate(Algorithm::EdDSA, "ed-1").unwrap();
        let stranger = SigningKey::generate(Algorithm::ES256, "es-1").unwrap();
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, jwks(&[&es, &rs, &ed]).to_string()).unwrap();
        Keys {
            es,
            rs,
            ed,
            stranger,
            jwks_file,
        }
    }

    /// A valid ES256 token for `sub` with `scope`.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        self.es
            .sign(&claims(ISSUER, AUDIENCE, sub, scope, 300, None))
            .unwrap()
    }
}

/// How a test wants its stack.
#[derive(Clone)]
pub struct Options {
    pub limit: u32,
    pub fail_open: bool,
    /// Point the limiter at a port where nothing listens.
    pub dynamo_down: bool,
    /// Point the gateway at a port where nothing listens.
    pub worker_down: bool,
    /// Serve this model folder instead of the demo models.
    pub model_dir: Option<PathBuf>,
    /// A second worker pool serving this folder, with certificates of its own (its own CA
    /// and client identities), named in `IHUB_GATEWAY_WORKER_POOLS`.
    pub second_pool: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limit: 1000,
            fail_open: false,
            dynamo_down: false,
            worker_down: false,
            model_dir: None,
            second_pool: None,
        }
    }
}

pub type LocalGateway = App<DynamoLimiter, Pools>;

pub struct Stack {
    pub url: String,
    pub gateway: Arc<LocalGateway>,
    pub keys: Keys,
    pub certs: CertPaths,
    pub worker: Option<RunningWorker>,
    /// The second pool's worker ([`Options::second_pool`]).
    pub second: Option<RunningWorker>,
    pub http: reqwest::Client,
    _dynalite: Option<Dynalite>,
    _dir: tempfile::TempDir,
}

pub async fn start_worker(certs: &CertPaths, model_dir: Option<PathBuf>) -> RunningWorker {
    let models = model_dir.unwrap_or_else(|| {
        let demo = root().join("models");
        assert!(demo.join("wine").is_dir(), "run `make models` first");
        demo
    });
    let args = ServeArgs::from_flags([
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--model-dir".as_ref(),
        models.as_os_str(),
        "--tls-cert".as_ref(),
        certs.server_cert.as_os_str(),
        "--tls-key".as_ref(),
        certs.server_key.as_os_str(),
        "--tls-client-ca".as_ref(),
        certs.ca.as_os_str(),
        "--tls-client-names".as_ref(),
        GATEWAY_CLIENT_NAME.as_ref(),
        "--tls-health-names".as_ref(),
        HEALTH_CLIENT_NAME.as_ref(),
        "--max-prompt-bytes".as_ref(),
        "65536".as_ref(),
        "--drain-timeout".as_ref(),
        "5s".as_ref(),
    ] as [&std::ffi::OsStr; 20])
    .unwrap();
    let mut worker = server::start(args).await.unwrap();
    worker.ready().await.unwrap();
    worker
}

/// The gateway's worker settings, with the predict client certificate.
pub fn worker_config(addr: &str, certs: &CertPaths) -> WorkerConfig {
    WorkerConfig {
        tls: WorkerClientTls::from_files(&certs.ca, &certs.client_cert, &certs.client_key),
        ..group_from_vars(&[
            ("IHUB_GATEWAY_WORKER_ADDRS", addr),
            ("IHUB_GATEWAY_WORKER_TIMEOUT", "3s"),
            ("IHUB_GATEWAY_WORKER_CONNECT_TIMEOUT", "500ms"),
        ])
        .unwrap()
    }
}

/// The health function's worker settings: its own certificate, which the worker lets
/// call only the health service.
pub fn health_worker_config(addr: &str, certs: &CertPaths) -> WorkerConfig {
    WorkerConfig {
        tls: WorkerClientTls::from_files(&certs.ca, &certs.health_cert, &certs.health_key),
        ..worker_config(addr, certs)
    }
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        inferencehub_functions::crypto::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let certs = certs::generate(&dir.path().join("certs")).unwrap();
        let keys = Keys::new(dir.path());

        let (worker, worker_addr) = if options.worker_down {
            (None, format!("https://127.0.0.1:{}", free_port()))
        } else {
            let w = start_worker(&certs, options.model_dir.clone()).await;
            let addr = format!("https://127.0.0.1:{}", w.grpc_addr.port());
            (Some(w), addr)
        };
        let (dynalite, endpoint) = if options.dynamo_down {
            (None, format!("http://127.0.0.1:{}", free_port()))
        } else {
            let d = Dynalite::start(TABLE).await.unwrap();
            let e = d.endpoint.clone();
            (Some(d), e)
        };

        // The second pool: its own CA, server and client certificates.
        let (second, pools, health_pools) = match &options.second_pool {
            None => (None, None, None),
            Some(models) => {
                let own = certs::generate(&dir.path().join("certs-2")).unwrap();
                let w = start_worker(&own, Some(models.clone())).await;
                let pool = |cert: &Path, key: &Path| {
                    serde_json::json!([{
                        "name": "second",
                        "addrs": [format!("https://127.0.0.1:{}", w.grpc_addr.port())],
                        "tls_ca": own.ca,
                        "tls_cert": cert,
                        "tls_key": key,
                    }])
                    .to_string()
                };
                let pools = pool(&own.client_cert, &own.client_key);
                let health = pool(&own.health_cert, &own.health_key);
                (Some(w), Some(pools), Some(health))
            }
        };

        let jwks_file = keys.jwks_file.to_string_lossy().into_owned();
        let limit = options.limit.to_string();
        let tiers = format!("pro={}", options.limit * 2);
        let config: PredictConfig = from_vars(&[
            ("IHUB_GATEWAY_JWT_ISSUER", ISSUER),
            ("IHUB_GATEWAY_JWT_AUDIENCE", AUDIENCE),
            ("IHUB_GATEWAY_JWKS_FILE", &jwks_file),
            ("IHUB_GATEWAY_JWT_LEEWAY", "5s"),
            ("IHUB_GATEWAY_WORKER_ADDRS", &worker_addr),
            ("IHUB_GATEWAY_RATE_LIMIT_TABLE", TABLE),
            ("IHUB_GATEWAY_RATE_LIMIT_DEFAULT", &limit),
            ("IHUB_GATEWAY_RATE_LIMIT_TIERS", &tiers),
            ("IHUB_GATEWAY_RATE_LIMIT_WINDOW", "1h"),
            (
                "IHUB_GATEWAY_RATE_LIMIT_FAIL_OPEN",
                &options.fail_open.to_string(),
            ),
            ("IHUB_GATEWAY_RATE_LIMIT_TIMEOUT", "800ms"),
        ])
        .unwrap();
        let auth = Arc::new(Authenticator::new(config.auth).await.unwrap());
        let worker_client = Pools::connect(WorkerConfig {
            pools,
            ..worker_config(&worker_addr, &certs)
        })
        .await
        .unwrap();
        let (limits, api) = (config.limits, config.api);
        let gateway = App {
            predict: Predict {
                auth: auth.clone(),
                limiter: DynamoLimiter::new(local_client(&endpoint, limits.timeout), TABLE),
                worker: worker_client.clone(),
                catalog: Catalog::new(api.catalog_ttl),
                limits,
                api: api.clone(),
            },
            models: Models {
                auth,
                worker: worker_client.clone(),
                catalog: Catalog::new(api.catalog_ttl),
            },
            health: Health {
                worker: Pools::connect(WorkerConfig {
                    pools: health_pools,
                    ..health_worker_config(&worker_addr, &certs)
                })
                .await
                .unwrap(),
            },
        };
        let gateway = Arc::new(gateway);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(inferencehub_tools::gateway::serve(
            listener,
            gateway.clone(),
            std::future::pending(),
        ));
        Stack {
            url: format!("http://{addr}"),
            gateway,
            keys,
            certs,
            worker,
            second,
            http: reqwest::Client::new(),
            _dynalite: dynalite,
            _dir: dir,
        }
    }

    pub async fn post(&self, token: Option<&str>, body: &str) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/v1/predict", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    /// A POST of `body` to `path` with `headers`.
    pub async fn post_to(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    /// Predict calls the worker has answered (any code), from its metrics endpoint.
    pub async fn worker_calls(&self) -> f64 {
        answered(self.worker.as_ref().unwrap()).await
    }
}

/// Predict calls `worker` has answered (any code), from its metrics endpoint.
pub async fn answered(worker: &RunningWorker) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", worker.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("inferencehub_worker_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A response's JSON body.
pub async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.unwrap()
}
