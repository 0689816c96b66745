//! The gateway's configuration, read once per cold start from `IHUB_GATEWAY_*` environment
//! variables into typed structs (clap with `env`, the same style as the worker's flags) and
//! validated there. Each default is written once, in its `#[arg]`; durations carry their
//! unit (`5s`, `250ms`). `docs/configuration.md` is generated from these definitions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, ValueEnum};
use inferencehub_proto::settings::{self, duration};

/// Where the JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched at cold start, refetched at most once per interval for an unknown `kid`.
    Url(String),
    /// A local JWKS file (development).
    File(PathBuf),
}

fn window(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("the window must be at least 1 second".into()),
        d => Ok(d),
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Exact `iss` every token must carry.
    #[arg(long = "jwt-issuer", env = "IHUB_GATEWAY_JWT_ISSUER")]
    pub issuer: String,
    /// Exact `aud` every token must carry; an Amazon Cognito access token (no `aud`) must
    /// carry it as `client_id` instead.
    #[arg(long = "jwt-audience", env = "IHUB_GATEWAY_JWT_AUDIENCE")]
    pub audience: String,
    /// JWKS URL, fetched at cold start and refetched when a token names an unknown `kid`.
    #[arg(long, env = "IHUB_GATEWAY_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// JWKS file instead of a URL (development).
    #[arg(long, env = "IHUB_GATEWAY_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`/`nbf`.
    #[arg(long = "jwt-leeway", env = "IHUB_GATEWAY_JWT_LEEWAY", default_value = "30s", value_parser = duration)]
    pub leeway: Duration,
    /// Claim that selects the rate-limit tier. It must come from an identity-provider
    /// attribute users cannot write themselves (see docs/security.md).
    #[arg(
        long = "rate-limit-tier-claim",
        env = "IHUB_GATEWAY_RATE_LIMIT_TIER_CLAIM",
        default_value = "tier"
    )]
    pub tier_claim: String,
    /// When set (not empty), the token header's `typ` must equal it (e.g. `at+jwt`, RFC
    /// 9068), so an ID token or another kind of JWT from the same issuer is not taken for an
    /// access token.
    #[arg(long = "jwt-required-typ", env = "IHUB_GATEWAY_JWT_REQUIRED_TYP")]
    pub required_typ: Option<String>,
    /// When set (not empty), the `token_use` claim must equal it (Amazon Cognito: `access`).
    #[arg(
        long = "jwt-required-token-use",
        env = "IHUB_GATEWAY_JWT_REQUIRED_TOKEN_USE"
    )]
    pub required_token_use: Option<String>,
    /// Least time between two JWKS fetches triggered by unknown `kid`s.
    #[arg(long = "jwks-refetch", env = "IHUB_GATEWAY_JWKS_REFETCH", default_value = "60s", value_parser = duration)]
    pub refetch_interval: Duration,
    /// Age after which a fetched JWKS is fetched again, so a key the identity provider
    /// removed stops being trusted by warm instances.
    #[arg(long = "jwks-refresh", env = "IHUB_GATEWAY_JWKS_REFRESH", default_value = "10m", value_parser = duration)]
    pub refresh_interval: Duration,
    /// Age after which keys fetched from `IHUB_GATEWAY_JWKS_URL` stop being trusted when
    /// every refresh since has failed (tokens then get 503, not a pass): a key the identity
    /// provider withdrew while it could not be reached is not trusted forever.
    #[arg(long = "jwks-max-age", env = "IHUB_GATEWAY_JWKS_MAX_AGE", default_value = "1h", value_parser = duration)]
    pub max_key_age: Duration,
}

impl AuthConfig {
    /// The key source: the URL when set, else the file. The URL must be `https://`
    /// (plain `http://` only to a loopback host, for development): keys fetched in the
    /// clear could be swapped on the way.
    pub fn jwks(&self) -> anyhow::Result<JwksSource> {
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => {
                if !secure_or_loopback(url) {
                    bail!(
                        "IHUB_GATEWAY_JWKS_URL must be an https:// URL (http:// is accepted only for \
                         a loopback host, in development): got {url:?}"
                    );
                }
                Ok(JwksSource::Url(url.clone()))
            }
            (None, Some(file)) => Ok(JwksSource::File(file.clone())),
            (None, None) => {
                bail!("set IHUB_GATEWAY_JWKS_URL (or IHUB_GATEWAY_JWKS_FILE for development)")
            }
        }
    }
}

/// `https://…`, or `http://` to 127.0.0.0/8, `[::1]` or `localhost`.
fn secure_or_loopback(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or_default();
    match parsed.scheme() {
        "https" => !host.is_empty(),
        "http" => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// Which rate limiter backs the predict function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LimiterBackend {
    /// One atomic conditional `UpdateItem` per request (production).
    #[value(name = "dynamodb")]
    DynamoDb,
    /// Per-process counters (local development only: each Lambda instance counts alone).
    Memory,
}

/// Rate-limit settings.
#[derive(Debug, Clone, Args)]
pub struct RateLimitConfig {
    /// `dynamodb`, or `memory` for local development only.
    #[arg(
        long = "rate-limit-backend",
        env = "IHUB_GATEWAY_RATE_LIMIT_BACKEND",
        value_enum,
        default_value = "dynamodb"
    )]
    pub backend: LimiterBackend,
    /// DynamoDB table name.
    #[arg(
        long = "rate-limit-table",
        env = "IHUB_GATEWAY_RATE_LIMIT_TABLE",
        default_value = "inferencehub-rate-limits"
    )]
    pub table: String,
    /// Requests per window for callers without a known tier.
    #[arg(
        long = "rate-limit-default",
        env = "IHUB_GATEWAY_RATE_LIMIT_DEFAULT",
        default_value_t = 60
    )]
    pub default_limit: u32,
    /// Requests per window by tier name: `name=limit,...`.
    #[arg(long = "rate-limit-tiers", env = "IHUB_GATEWAY_RATE_LIMIT_TIERS", default_value = "", value_parser = parse_tiers_arg)]
    pub tiers: HashMap<String, u32>,
    /// Window length (at least 1s).
    #[arg(long = "rate-limit-window", env = "IHUB_GATEWAY_RATE_LIMIT_WINDOW", default_value = "60s", value_parser = window)]
    pub window: Duration,
    /// When DynamoDB cannot be reached: let requests through (logged, counted) instead of 503.
    #[arg(long = "rate-limit-fail-open", env = "IHUB_GATEWAY_RATE_LIMIT_FAIL_OPEN", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub fail_open: bool,
    /// Budget of the DynamoDB call (including its one retry).
    #[arg(id = "rate_limit_timeout", long = "rate-limit-timeout", env = "IHUB_GATEWAY_RATE_LIMIT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub timeout: Duration,
}

impl RateLimitConfig {
    /// The limit for a caller's tier (unknown or absent tiers get the default).
    pub fn limit_for(&self, tier: Option<&str>) -> (String, u32) {
        match tier.and_then(|t| self.tiers.get(t).map(|l| (t, *l))) {
            Some((name, limit)) => (name.to_string(), limit),
            None => ("default".to_string(), self.default_limit),
        }
    }
}

fn parse_tiers_arg(text: &str) -> Result<HashMap<String, u32>, String> {
    parse_tiers(text).map_err(|e| format!("{e:#}"))
}

/// Parses `name=limit,name=limit`.
pub fn parse_tiers(text: &str) -> anyhow::Result<HashMap<String, u32>> {
    let mut tiers = HashMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, limit) = part
            .split_once('=')
            .with_context(|| format!("tier {part:?} must look like name=limit"))?;
        let limit: u32 = limit
            .trim()
            .parse()
            .with_context(|| format!("tier {part:?} has a bad limit"))?;
        tiers.insert(name.trim().to_string(), limit);
    }
    Ok(tiers)
}

/// How to reach the workers.
#[derive(Clone, Args)]
pub struct WorkerConfig {
    /// One or more worker URLs (`https://host:port`; a bare `host:port` means https),
    /// comma-separated, used round robin.
    #[arg(
        long = "worker-addrs",
        env = "IHUB_GATEWAY_WORKER_ADDRS",
        value_delimiter = ',',
        required = true
    )]
    pub addrs: Vec<String>,
    /// Mutual-TLS material and the name the worker certificates must be valid for.
    #[command(flatten)]
    pub tls: settings::WorkerClientTls,
    /// Secrets Manager secret (ARN or name) whose JSON holds `ca`, `client_cert` and
    /// `client_key` (PEM): read once per cold start with GetSecretValue, so the key never
    /// sits in the function's configuration. Replaces the three IHUB_GATEWAY_WORKER_TLS_CA,
    /// _CERT and _KEY values (setting both is refused).
    #[arg(
        long = "worker-tls-secret-id",
        env = "IHUB_GATEWAY_WORKER_TLS_SECRET_ID"
    )]
    pub tls_secret_id: Option<String>,
    /// More worker pools, as a JSON array: `[{"name": "cpu", "addrs": ["https://cpu:50051"]}]`,
    /// each optionally with its own `tls_ca`, `tls_cert`, `tls_key` (paths or PEM text) or
    /// `tls_secret_id`, and `tls_server_name` (what it leaves out is the first pool's: the
    /// addresses and TLS settings above). Each model's calls go to the first pool whose
    /// catalogue lists it; failover stays inside a pool.
    #[arg(long = "worker-pools", env = "IHUB_GATEWAY_WORKER_POOLS")]
    pub pools: Option<String>,
    /// Deadline of every worker call (one retry on another worker inside it).
    #[arg(id = "worker_timeout", long = "worker-timeout", env = "IHUB_GATEWAY_WORKER_TIMEOUT", default_value = settings::DEFAULT_WORKER_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
    /// Longest wait for one attempt on one worker before the call is retried once on
    /// another (a frozen worker holds TCP open and never answers). The second attempt gets
    /// what is left of the deadline.
    #[arg(long = "worker-attempt-timeout", env = "IHUB_GATEWAY_WORKER_ATTEMPT_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub attempt_timeout: Duration,
    /// TCP + TLS connect budget.
    #[arg(long = "worker-connect-timeout", env = "IHUB_GATEWAY_WORKER_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Rebuild a connection unused for this long (load balancers drop idle connections
    /// while a Lambda is frozen).
    #[arg(long = "worker-idle-rebuild", env = "IHUB_GATEWAY_WORKER_IDLE_REBUILD", default_value = "60s", value_parser = duration)]
    pub idle_rebuild: Duration,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS values may be PEM text (the client key among them): never printed.
        f.debug_struct("WorkerConfig")
            .field("addrs", &self.addrs)
            .field("server_name", &self.tls.server_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// The worker URLs, `https://` added where no scheme was given; any other scheme is
    /// refused (the worker speaks mutual TLS only, and a plaintext URL would send the
    /// caller's inputs in the clear).
    pub fn urls(&self) -> anyhow::Result<Vec<String>> {
        self.addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| match a.split_once("://") {
                None => Ok(format!("https://{a}")),
                Some(("https", _)) => Ok(a.to_string()),
                Some(_) => {
                    bail!("IHUB_GATEWAY_WORKER_ADDRS {a:?}: workers are reached over https:// only")
                }
            })
            .collect()
    }
}

/// Request limits of the HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Largest body accepted, in bytes (413 beyond).
    #[arg(long = "max-body-bytes", env = "IHUB_GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest prompt accepted, in bytes (the worker's advertised cap applies too).
    #[arg(long = "max-prompt-bytes", env = "IHUB_GATEWAY_MAX_PROMPT_BYTES", default_value_t = settings::DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,
    /// Most inputs in one batch request.
    #[arg(
        long = "max-batch-inputs",
        env = "IHUB_GATEWAY_MAX_BATCH_INPUTS",
        default_value_t = 32
    )]
    pub max_batch_inputs: usize,
    /// Largest answer a request may ask for, in bytes of JSON, estimated from the model's
    /// signature before any quota is spent or the worker runs (400 beyond: fewer inputs
    /// or outputs). Lambda answers at most 6 MB.
    #[arg(
        long = "max-answer-bytes",
        env = "IHUB_GATEWAY_MAX_ANSWER_BYTES",
        default_value_t = 5_000_000
    )]
    pub max_answer_bytes: usize,
    /// How long the model catalogue is cached.
    #[arg(long = "catalog-ttl", env = "IHUB_GATEWAY_CATALOG_TTL", default_value = "60s", value_parser = duration)]
    pub catalog_ttl: Duration,
}

/// Settings of the `predict` function.
#[derive(Debug, Clone, Parser)]
#[command(name = "predict")]
pub struct PredictConfig {
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Rate limits.
    #[command(flatten)]
    pub limits: RateLimitConfig,
    /// The workers.
    #[command(flatten)]
    pub worker: WorkerConfig,
    /// Request limits.
    #[command(flatten)]
    pub api: ApiConfig,
}

/// Settings of the `models` function.
#[derive(Debug, Clone, Parser)]
#[command(name = "models")]
pub struct ModelsConfig {
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// The workers.
    #[command(flatten)]
    pub worker: WorkerConfig,
    /// Request limits (the catalogue's cache time).
    #[command(flatten)]
    pub api: ApiConfig,
}

/// Settings of the `health` function.
#[derive(Debug, Clone, Parser)]
#[command(name = "health")]
pub struct HealthConfig {
    /// The workers.
    #[command(flatten)]
    pub worker: WorkerConfig,
}

/// Reads a function's settings from the environment alone (a Lambda has no arguments).
pub fn from_env<T: Parser>() -> anyhow::Result<T> {
    T::try_parse_from([T::command().get_name().to_string()])
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// Settings from `vars` (variable name, value) alone, the process environment unread, the
/// rest at their defaults: how tests and tools build a function's configuration.
pub fn from_vars<T: Parser>(vars: &[(&str, &str)]) -> anyhow::Result<T> {
    settings::parse_vars([T::command().get_name().to_string()], vars)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// One group of settings ([`AuthConfig`], [`ApiConfig`], ...) from `vars` alone, as
/// [`from_vars`] reads a function's.
pub fn group_from_vars<T: Args>(vars: &[(&str, &str)]) -> anyhow::Result<T> {
    from_vars::<Only<T>>(vars).map(|only| only.group)
}

#[derive(Parser)]
#[command(name = "settings")]
struct Only<T: Args> {
    #[command(flatten)]
    group: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn tiers_parse_and_fall_back_to_the_default() {
        let tiers = parse_tiers(" free=10, pro = 600 ").unwrap();
        assert_eq!(tiers["free"], 10);
        assert_eq!(tiers["pro"], 600);
        assert!(parse_tiers("free").is_err());
        assert!(parse_tiers("free=x").is_err());
        let config: PredictConfig = from_vars(&[
            ("IHUB_GATEWAY_JWT_ISSUER", "iss"),
            ("IHUB_GATEWAY_JWT_AUDIENCE", "aud"),
            ("IHUB_GATEWAY_WORKER_ADDRS", "w:1"),
            ("IHUB_GATEWAY_RATE_LIMIT_DEFAULT", "5"),
            ("IHUB_GATEWAY_RATE_LIMIT_TIERS", "pro=600"),
        ])
        .unwrap();
        let limits = config.limits;
        assert_eq!(limits.limit_for(Some("pro")), ("pro".into(), 600));
        assert_eq!(limits.limit_for(Some("gold")), ("default".into(), 5));
        assert_eq!(limits.limit_for(None), ("default".into(), 5));
    }

    const BASE: &[(&str, &str)] = &[
        ("IHUB_GATEWAY_JWT_ISSUER", "iss"),
        ("IHUB_GATEWAY_JWT_AUDIENCE", "aud"),
        ("IHUB_GATEWAY_JWKS_FILE", "/jwks.json"),
        ("IHUB_GATEWAY_WORKER_ADDRS", "127.0.0.1:1, https://w2:2"),
    ];

    fn parse_with(vars: &[(&str, &str)]) -> anyhow::Result<PredictConfig> {
        from_vars(vars)
    }

    #[test]
    fn settings_have_types_defaults_and_clear_errors() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("IHUB_GATEWAY_WORKER_TLS_CA", "/ca.pem"),
            ("IHUB_GATEWAY_WORKER_TLS_CERT", "/c.pem"),
            ("IHUB_GATEWAY_WORKER_TLS_KEY", "/c.key"),
            ("IHUB_GATEWAY_RATE_LIMIT_FAIL_OPEN", "yes"),
            ("IHUB_GATEWAY_RATE_LIMIT_TIERS", "pro=600"),
            ("IHUB_GATEWAY_WORKER_TIMEOUT", "1500ms"),
        ]);
        let config = parse_with(&vars).unwrap();
        assert_eq!(
            config.worker.urls().unwrap(),
            ["https://127.0.0.1:1", "https://w2:2"]
        );
        assert!(config.limits.fail_open);
        assert_eq!(config.limits.tiers["pro"], 600);
        assert_eq!(config.limits.window, Duration::from_secs(60));
        assert_eq!(config.worker.timeout, Duration::from_millis(1500));
        assert_eq!(config.worker.attempt_timeout, Duration::from_secs(2));
        assert_eq!(config.api.max_prompt_bytes, 16 * 1024);
        assert_eq!(config.worker.tls.server_name, "localhost");
        assert_eq!(
            config.auth.jwks().unwrap(),
            JwksSource::File("/jwks.json".into())
        );

        vars.push(("IHUB_GATEWAY_RATE_LIMIT_WINDOW", "0"));
        let err = parse_with(&vars).unwrap_err().to_string();
        assert!(err.contains("at least 1 second"), "{err}");
        // A duration without its unit is refused, naming the setting.
        let mut bare = BASE.to_vec();
        bare.push(("IHUB_GATEWAY_WORKER_TIMEOUT", "5000"));
        let err = parse_with(&bare).unwrap_err().to_string();
        assert!(
            err.contains("worker-timeout") && err.contains("no unit"),
            "{err}"
        );
    }

    #[test]
    fn keys_and_workers_are_reached_over_tls_only() {
        let mut vars = BASE.to_vec();
        vars.retain(|(k, _)| *k != "IHUB_GATEWAY_JWKS_FILE" && *k != "IHUB_GATEWAY_WORKER_ADDRS");
        let url = |jwks: &str, worker: &str| {
            let mut v = vars.clone();
            v.push(("IHUB_GATEWAY_JWKS_URL", jwks));
            v.push(("IHUB_GATEWAY_WORKER_ADDRS", worker));
            let config = parse_with(&v).unwrap();
            (
                config.auth.jwks().map_err(|e| e.to_string()),
                config.worker.urls(),
            )
        };
        let (jwks, workers) = url("https://idp.example/.well-known/jwks.json", "w:1");
        assert!(jwks.is_ok() && workers.is_ok());
        for insecure in [
            "http://idp.example/.well-known/jwks.json",
            "http://169.254.169.254/keys",
            "ftp://idp.example/jwks.json",
            "not a url",
        ] {
            let err = url(insecure, "w:1").0.unwrap_err();
            assert!(
                err.contains("IHUB_GATEWAY_JWKS_URL must be an https:// URL"),
                "{err}"
            );
        }
        for dev in [
            "http://127.0.0.1:8080/jwks.json",
            "http://localhost/jwks.json",
            "http://[::1]:9/k",
        ] {
            assert!(url(dev, "w:1").0.is_ok(), "{dev}");
        }
        let err = url("https://idp.example/k", "https://a:1, http://b:2")
            .1
            .unwrap_err();
        assert!(err.to_string().contains("https:// only"), "{err}");
    }

    #[test]
    fn every_function_has_a_consistent_command_line() {
        PredictConfig::command().debug_assert();
        ModelsConfig::command().debug_assert();
        HealthConfig::command().debug_assert();
    }

    /// Every setting of every function is the gateway's own: `IHUB_GATEWAY_*`.
    #[test]
    fn every_gateway_setting_has_the_gateways_prefix() {
        for command in [
            PredictConfig::command(),
            ModelsConfig::command(),
            HealthConfig::command(),
        ] {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env() else {
                    continue;
                };
                let env = env.to_string_lossy();
                assert!(env.starts_with("IHUB_GATEWAY_"), "{env}");
            }
        }
    }
}
