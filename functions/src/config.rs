//! Configuration, read once per cold start from environment variables into typed structs
//! (clap with `env`, the same style as the worker's flags) and validated there. Every
//! variable, its default and its meaning is listed in the README's configuration table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, ValueEnum};
use inferencehub_proto::settings::{self, Renamed};

/// Where the JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched at cold start, refetched at most once per interval for an unknown `kid`.
    Url(String),
    /// A local JWKS file (development).
    File(PathBuf),
}

fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("{text:?} is not a whole number of milliseconds: {e}"))
}

fn secs(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("{text:?} is not a whole number of seconds: {e}"))
}

fn window_secs(text: &str) -> Result<Duration, String> {
    match secs(text)? {
        d if d.is_zero() => Err("the window must be at least 1 second".into()),
        d => Ok(d),
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, Args)]
pub struct AuthConfig {
    /// Exact `iss` every token must carry.
    #[arg(long = "jwt-issuer", env = "IHUB_JWT_ISSUER")]
    pub issuer: String,
    /// Exact `aud` every token must carry.
    #[arg(long = "jwt-audience", env = "IHUB_JWT_AUDIENCE")]
    pub audience: String,
    /// JWKS URL, fetched at cold start and refetched when a token names an unknown `kid`.
    #[arg(long, env = "IHUB_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// JWKS file instead of a URL (development).
    #[arg(long, env = "IHUB_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-secs",
        env = "IHUB_JWT_LEEWAY_SECS",
        default_value_t = 30
    )]
    pub leeway_secs: u64,
    /// Claim that selects the rate-limit tier. It must come from an identity-provider
    /// attribute users cannot write themselves (see the README).
    #[arg(
        long = "rate-limit-tier-claim",
        env = "IHUB_RATE_LIMIT_TIER_CLAIM",
        default_value = "tier"
    )]
    pub tier_claim: String,
    /// When set, the token header's `typ` must equal it (e.g. `at+jwt`, RFC 9068), so an
    /// ID token or another kind of JWT from the same issuer is not taken for an access token.
    #[arg(long = "jwt-required-typ", env = "IHUB_JWT_REQUIRED_TYP")]
    pub required_typ: Option<String>,
    /// When set, the `token_use` claim must equal it (Amazon Cognito: `access`).
    #[arg(long = "jwt-required-token-use", env = "IHUB_JWT_REQUIRED_TOKEN_USE")]
    pub required_token_use: Option<String>,
    /// Least time between two JWKS fetches triggered by unknown `kid`s, in seconds.
    #[arg(long = "jwks-refetch-secs", env = "IHUB_JWKS_REFETCH_SECS", default_value = "60", value_parser = secs)]
    pub refetch_interval: Duration,
    /// Age, in seconds, after which a fetched JWKS is fetched again, so a key the identity
    /// provider removed stops being trusted by warm instances.
    #[arg(long = "jwks-refresh-secs", env = "IHUB_JWKS_REFRESH_SECS", default_value = "600", value_parser = secs)]
    pub refresh_interval: Duration,
}

impl AuthConfig {
    /// Settings for a fixed key source (tests, benchmarks); the rest at their defaults.
    pub fn new(issuer: &str, audience: &str, jwks: JwksSource) -> Self {
        let (jwks_url, jwks_file) = match jwks {
            JwksSource::Url(url) => (Some(url), None),
            JwksSource::File(file) => (None, Some(file)),
        };
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url,
            jwks_file,
            leeway_secs: 30,
            tier_claim: "tier".into(),
            required_typ: None,
            required_token_use: None,
            refetch_interval: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(600),
        }
    }

    /// The key source: the URL when set, else the file. The URL must be `https://`
    /// (plain `http://` only to a loopback host, for development): keys fetched in the
    /// clear could be swapped on the way.
    pub fn jwks(&self) -> anyhow::Result<JwksSource> {
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => {
                if !secure_or_loopback(url) {
                    bail!(
                        "IHUB_JWKS_URL must be an https:// URL (http:// is accepted only for \
                         a loopback host, in development): got {url:?}"
                    );
                }
                Ok(JwksSource::Url(url.clone()))
            }
            (None, Some(file)) => Ok(JwksSource::File(file.clone())),
            (None, None) => bail!("set IHUB_JWKS_URL (or IHUB_JWKS_FILE for development)"),
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
        env = "IHUB_RATE_LIMIT_BACKEND",
        value_enum,
        default_value = "dynamodb"
    )]
    pub backend: LimiterBackend,
    /// DynamoDB table name.
    #[arg(
        long = "rate-limit-table",
        env = "IHUB_RATE_LIMIT_TABLE",
        default_value = "inferencehub-rate-limits"
    )]
    pub table: String,
    /// Requests per window for callers without a known tier.
    #[arg(
        long = "rate-limit-default",
        env = "IHUB_RATE_LIMIT_DEFAULT",
        default_value_t = 60
    )]
    pub default_limit: u32,
    /// Requests per window by tier name: `name=limit,...`.
    #[arg(long = "rate-limit-tiers", env = "IHUB_RATE_LIMIT_TIERS", default_value = "", value_parser = parse_tiers_arg)]
    pub tiers: HashMap<String, u32>,
    /// Window length in seconds.
    #[arg(long = "rate-limit-window-secs", env = "IHUB_RATE_LIMIT_WINDOW_SECS", default_value = "60", value_parser = window_secs)]
    pub window: Duration,
    /// When DynamoDB cannot be reached: let requests through (logged, counted) instead of 503.
    #[arg(long = "rate-limit-fail-open", env = "IHUB_RATE_LIMIT_FAIL_OPEN", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub fail_open: bool,
    /// Budget of the DynamoDB call (including its one retry), in milliseconds.
    #[arg(id = "rate_limit_timeout", long = "rate-limit-timeout-ms", env = "IHUB_RATE_LIMIT_TIMEOUT_MS", default_value = "1000", value_parser = millis)]
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
        long = "worker-addr",
        env = "IHUB_WORKER_ADDR",
        value_delimiter = ',',
        required = true
    )]
    pub addrs: Vec<String>,
    /// Mutual-TLS material and the name the worker certificates must be valid for.
    #[command(flatten)]
    pub tls: settings::WorkerClientTls,
    /// Secrets Manager secret (ARN or name) whose JSON holds `ca`, `client_cert` and
    /// `client_key` (PEM): read once per cold start with GetSecretValue, so the key never
    /// sits in the function's configuration. Replaces the three IHUB_WORKER_CLIENT_TLS_*
    /// values (setting both is refused).
    #[arg(
        long = "worker-tls-secret-id",
        env = "IHUB_WORKER_CLIENT_TLS_SECRET_ID"
    )]
    pub tls_secret_id: Option<String>,
    /// Deadline of every worker call, in milliseconds (one retry on UNAVAILABLE inside it).
    #[arg(id = "worker_timeout", long = "worker-timeout-ms", env = "IHUB_WORKER_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub timeout: Duration,
    /// Longest wait for one attempt on one worker, in milliseconds, before the call is
    /// retried once on another (a frozen worker holds TCP open and never answers). The
    /// second attempt gets what is left of the deadline.
    #[arg(long = "worker-attempt-timeout-ms", env = "IHUB_WORKER_ATTEMPT_TIMEOUT_MS", default_value = "2000", value_parser = millis)]
    pub attempt_timeout: Duration,
    /// TCP + TLS connect budget, in milliseconds.
    #[arg(long = "worker-connect-timeout-ms", env = "IHUB_WORKER_CONNECT_TIMEOUT_MS", default_value = "1000", value_parser = millis)]
    pub connect_timeout: Duration,
    /// Rebuild a connection unused for this many seconds (load balancers drop idle
    /// connections while a Lambda is frozen).
    #[arg(long = "worker-idle-rebuild-secs", env = "IHUB_WORKER_IDLE_REBUILD_SECS", default_value = "60", value_parser = secs)]
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
    /// Settings for `addrs` with the given TLS material; the rest at their defaults.
    pub fn new(addrs: Vec<String>, tls: settings::WorkerClientTls) -> Self {
        Self {
            addrs,
            tls,
            tls_secret_id: None,
            timeout: Duration::from_millis(5000),
            attempt_timeout: Duration::from_millis(2000),
            connect_timeout: Duration::from_millis(1000),
            idle_rebuild: Duration::from_secs(60),
        }
    }

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
                Some(_) => bail!("IHUB_WORKER_ADDR {a:?}: workers are reached over https:// only"),
            })
            .collect()
    }
}

/// Request limits of the HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Largest body accepted, in bytes (413 beyond).
    #[arg(long = "max-body-bytes", env = "IHUB_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest prompt accepted, in bytes (the worker's advertised cap applies too).
    #[arg(long = "max-prompt-bytes", env = "IHUB_MAX_PROMPT_BYTES", default_value_t = settings::DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,
    /// Most inputs in one batch request.
    #[arg(
        long = "max-batch-inputs",
        env = "IHUB_MAX_BATCH_INPUTS",
        default_value_t = 32
    )]
    pub max_batch_inputs: usize,
    /// How long the model catalogue is cached, in seconds.
    #[arg(long = "catalog-ttl-secs", env = "IHUB_CATALOG_TTL_SECS", default_value = "60", value_parser = secs)]
    pub catalog_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_prompt_bytes: settings::DEFAULT_MAX_PROMPT_BYTES,
            max_batch_inputs: 32,
            catalog_ttl: Duration::from_secs(60),
        }
    }
}

/// Environment variables renamed in this release; the old names still work, with a
/// warning, until the next one.
pub const RENAMED: &[Renamed] = &[
    Renamed {
        old: "IHUB_WORKER_CA_PEM",
        new: "IHUB_WORKER_CLIENT_TLS_CA",
        arg: "ca",
    },
    Renamed {
        old: "IHUB_WORKER_CA_FILE",
        new: "IHUB_WORKER_CLIENT_TLS_CA",
        arg: "ca",
    },
    Renamed {
        old: "IHUB_WORKER_CLIENT_CERT_PEM",
        new: "IHUB_WORKER_CLIENT_TLS_CERT",
        arg: "cert",
    },
    Renamed {
        old: "IHUB_WORKER_CLIENT_CERT_FILE",
        new: "IHUB_WORKER_CLIENT_TLS_CERT",
        arg: "cert",
    },
    Renamed {
        old: "IHUB_WORKER_CLIENT_KEY_PEM",
        new: "IHUB_WORKER_CLIENT_TLS_KEY",
        arg: "key",
    },
    Renamed {
        old: "IHUB_WORKER_CLIENT_KEY_FILE",
        new: "IHUB_WORKER_CLIENT_TLS_KEY",
        arg: "key",
    },
];

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

/// Reads a function's settings from the environment alone (a Lambda has no arguments),
/// logging a warning for every renamed variable still in use.
pub fn from_env<T: Parser>() -> anyhow::Result<T> {
    let (config, warnings) = settings::parse::<T>(
        [T::command().get_name().to_string()],
        RENAMED,
        settings::env_var,
    )
    .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
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
        let config = RateLimitConfig {
            backend: LimiterBackend::Memory,
            table: String::new(),
            default_limit: 5,
            tiers,
            window: Duration::from_secs(60),
            fail_open: false,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(config.limit_for(Some("pro")), ("pro".into(), 600));
        assert_eq!(config.limit_for(Some("gold")), ("default".into(), 5));
        assert_eq!(config.limit_for(None), ("default".into(), 5));
    }

    fn parse_with(vars: &[(&str, &str)]) -> Result<(PredictConfig, Vec<String>), clap::Error> {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        // The process environment is not touched (setting it is unsafe under threads):
        // the variables arrive as the flags clap would fill from them.
        let mut args = vec!["predict".to_string()];
        let command = PredictConfig::command();
        for (name, value) in vars {
            if let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == *name))
            {
                args.push(format!("--{}={value}", arg.get_long().unwrap()));
            }
        }
        settings::parse::<PredictConfig>(args, RENAMED, env)
    }

    const BASE: &[(&str, &str)] = &[
        ("IHUB_JWT_ISSUER", "iss"),
        ("IHUB_JWT_AUDIENCE", "aud"),
        ("IHUB_JWKS_FILE", "/jwks.json"),
        ("IHUB_WORKER_ADDR", "127.0.0.1:1, https://w2:2"),
    ];

    #[test]
    fn settings_have_types_defaults_and_clear_errors() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("IHUB_WORKER_CLIENT_TLS_CA", "/ca.pem"),
            ("IHUB_WORKER_CLIENT_TLS_CERT", "/c.pem"),
            ("IHUB_WORKER_CLIENT_TLS_KEY", "/c.key"),
            ("IHUB_RATE_LIMIT_FAIL_OPEN", "yes"),
            ("IHUB_RATE_LIMIT_TIERS", "pro=600"),
        ]);
        let (config, warnings) = parse_with(&vars).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(
            config.worker.urls().unwrap(),
            ["https://127.0.0.1:1", "https://w2:2"]
        );
        assert!(config.limits.fail_open);
        assert_eq!(config.limits.tiers["pro"], 600);
        assert_eq!(config.limits.window, Duration::from_secs(60));
        assert_eq!(config.api.max_prompt_bytes, 16 * 1024);
        assert_eq!(config.worker.tls.server_name, "localhost");
        assert_eq!(
            config.auth.jwks().unwrap(),
            JwksSource::File("/jwks.json".into())
        );

        vars.push(("IHUB_RATE_LIMIT_WINDOW_SECS", "0"));
        let err = parse_with(&vars).unwrap_err().to_string();
        assert!(err.contains("at least 1 second"), "{err}");
    }

    #[test]
    fn keys_and_workers_are_reached_over_tls_only() {
        let mut vars = BASE.to_vec();
        vars.retain(|(k, _)| *k != "IHUB_JWKS_FILE" && *k != "IHUB_WORKER_ADDR");
        vars.extend([
            ("IHUB_WORKER_CLIENT_TLS_CA", "/ca.pem"),
            ("IHUB_WORKER_CLIENT_TLS_CERT", "/c.pem"),
            ("IHUB_WORKER_CLIENT_TLS_KEY", "/c.key"),
        ]);
        let url = |jwks: &str, worker: &str| {
            let mut v = vars.clone();
            v.push(("IHUB_JWKS_URL", jwks));
            v.push(("IHUB_WORKER_ADDR", worker));
            let (config, _) = parse_with(&v).unwrap();
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
                err.contains("IHUB_JWKS_URL must be an https:// URL"),
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

    #[test]
    fn renamed_tls_variables_still_work_with_a_warning() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("IHUB_WORKER_CA_FILE", "/old-ca.pem"),
            ("IHUB_WORKER_CLIENT_CERT_PEM", "-----BEGIN CERTIFICATE-----"),
            ("IHUB_WORKER_CLIENT_TLS_KEY", "/new.key"),
        ]);
        let (config, warnings) = parse_with(&vars).unwrap();
        assert_eq!(config.worker.tls.ca, Some(PathBuf::from("/old-ca.pem")));
        assert_eq!(
            config.worker.tls.cert,
            Some(PathBuf::from("-----BEGIN CERTIFICATE-----"))
        );
        assert_eq!(config.worker.tls.key, Some(PathBuf::from("/new.key")));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("IHUB_WORKER_CA_FILE is deprecated"));
    }
}
