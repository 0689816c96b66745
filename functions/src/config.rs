//! Configuration from environment variables, read once per cold start and validated.
//! Every variable, its default and its meaning is listed in the README.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &str) -> anyhow::Result<String> {
    var(name).with_context(|| format!("{name} must be set"))
}

fn parsed<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")),
    }
}

fn flag(name: &str, default: bool) -> anyhow::Result<bool> {
    match var(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => bail!("{name}={v:?} is not a boolean"),
    }
}

/// A PEM value given inline (`<NAME>_PEM`, e.g. injected from Secrets Manager) or as a file
/// path (`<NAME>_FILE`).
fn pem(name: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(inline) = var(&format!("{name}_PEM")) {
        return Ok(inline.replace("\\n", "\n").into_bytes());
    }
    let path = required(&format!("{name}_FILE"))
        .with_context(|| format!("set {name}_PEM or {name}_FILE"))?;
    std::fs::read(&path).with_context(|| format!("reading {path}"))
}

/// Where the JWT verification keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// Fetched at cold start, refetched at most once a minute for an unknown `kid`.
    Url(String),
    /// A local JWKS file (development).
    File(PathBuf),
}

/// JWT verification settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// The key set.
    pub jwks: JwksSource,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim that selects the rate-limit tier.
    pub tier_claim: String,
    /// Least time between two JWKS fetches triggered by unknown `kid`s.
    pub refetch_interval: Duration,
}

impl AuthConfig {
    /// `IHUB_JWT_ISSUER`, `IHUB_JWT_AUDIENCE`, `IHUB_JWKS_URL` | `IHUB_JWKS_FILE`,
    /// `IHUB_JWT_LEEWAY_SECS` (30), `IHUB_RATE_LIMIT_TIER_CLAIM` (`tier`),
    /// `IHUB_JWKS_REFETCH_SECS` (60).
    pub fn from_env() -> anyhow::Result<Self> {
        let jwks = match (var("IHUB_JWKS_URL"), var("IHUB_JWKS_FILE")) {
            (Some(url), _) => JwksSource::Url(url),
            (None, Some(file)) => JwksSource::File(file.into()),
            (None, None) => bail!("set IHUB_JWKS_URL (or IHUB_JWKS_FILE for development)"),
        };
        Ok(Self {
            issuer: required("IHUB_JWT_ISSUER")?,
            audience: required("IHUB_JWT_AUDIENCE")?,
            jwks,
            leeway_secs: parsed("IHUB_JWT_LEEWAY_SECS", 30)?,
            tier_claim: var("IHUB_RATE_LIMIT_TIER_CLAIM").unwrap_or_else(|| "tier".into()),
            refetch_interval: Duration::from_secs(parsed("IHUB_JWKS_REFETCH_SECS", 60)?),
        })
    }
}

/// Which rate limiter backs the predict function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterBackend {
    /// One atomic conditional `UpdateItem` per request (production).
    DynamoDb,
    /// Per-process counters (local development only: each Lambda instance counts alone).
    Memory,
}

/// Rate-limit settings.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Backend.
    pub backend: LimiterBackend,
    /// DynamoDB table name.
    pub table: String,
    /// Requests per window for callers without a known tier.
    pub default_limit: u32,
    /// Requests per window by tier name.
    pub tiers: HashMap<String, u32>,
    /// Window length.
    pub window: Duration,
    /// When DynamoDB cannot be reached: let requests through (logged, counted) instead of 503.
    pub fail_open: bool,
    /// Budget for the DynamoDB call (including its one retry).
    pub timeout: Duration,
}

impl RateLimitConfig {
    /// `IHUB_RATE_LIMIT_BACKEND` (`dynamodb`|`memory`), `IHUB_RATE_LIMIT_TABLE`
    /// (`inferencehub-rate-limits`), `IHUB_RATE_LIMIT_DEFAULT` (60),
    /// `IHUB_RATE_LIMIT_TIERS` (e.g. `free=10,pro=600`), `IHUB_RATE_LIMIT_WINDOW_SECS` (60),
    /// `IHUB_RATE_LIMIT_FAIL_OPEN` (false), `IHUB_RATE_LIMIT_TIMEOUT_MS` (1000).
    pub fn from_env() -> anyhow::Result<Self> {
        let backend = match var("IHUB_RATE_LIMIT_BACKEND").as_deref() {
            None | Some("dynamodb") => LimiterBackend::DynamoDb,
            Some("memory") => LimiterBackend::Memory,
            Some(other) => bail!("IHUB_RATE_LIMIT_BACKEND={other:?}: use dynamodb or memory"),
        };
        let window_secs: u64 = parsed("IHUB_RATE_LIMIT_WINDOW_SECS", 60)?;
        if window_secs == 0 {
            bail!("IHUB_RATE_LIMIT_WINDOW_SECS must be at least 1");
        }
        Ok(Self {
            backend,
            table: var("IHUB_RATE_LIMIT_TABLE")
                .unwrap_or_else(|| "inferencehub-rate-limits".into()),
            default_limit: parsed("IHUB_RATE_LIMIT_DEFAULT", 60)?,
            tiers: parse_tiers(&var("IHUB_RATE_LIMIT_TIERS").unwrap_or_default())?,
            window: Duration::from_secs(window_secs),
            fail_open: flag("IHUB_RATE_LIMIT_FAIL_OPEN", false)?,
            timeout: Duration::from_millis(parsed("IHUB_RATE_LIMIT_TIMEOUT_MS", 1000)?),
        })
    }

    /// The limit for a caller's tier (unknown or absent tiers get the default).
    pub fn limit_for(&self, tier: Option<&str>) -> (String, u32) {
        match tier.and_then(|t| self.tiers.get(t).map(|l| (t, *l))) {
            Some((name, limit)) => (name.to_string(), limit),
            None => ("default".to_string(), self.default_limit),
        }
    }
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
#[derive(Clone)]
pub struct WorkerConfig {
    /// One or more `https://host:port` URLs, used round robin.
    pub addrs: Vec<String>,
    /// CA that signed the workers' certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// Client certificate (PEM).
    pub cert_pem: Vec<u8>,
    /// Client key (PEM). Never logged.
    pub key_pem: Vec<u8>,
    /// Name the worker certificates must be valid for.
    pub server_name: String,
    /// Deadline of every call.
    pub timeout: Duration,
    /// TCP + TLS connect budget.
    pub connect_timeout: Duration,
    /// Rebuild a connection unused for this long (load balancers drop idle connections
    /// while a Lambda is frozen).
    pub idle_rebuild: Duration,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("addrs", &self.addrs)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// `IHUB_WORKER_ADDR` (comma-separated), `IHUB_WORKER_CA_PEM|_FILE`,
    /// `IHUB_WORKER_CLIENT_CERT_PEM|_FILE`, `IHUB_WORKER_CLIENT_KEY_PEM|_FILE`,
    /// `IHUB_WORKER_TLS_SERVER_NAME` (`localhost`), `IHUB_WORKER_TIMEOUT_MS` (5000),
    /// `IHUB_WORKER_CONNECT_TIMEOUT_MS` (1000), `IHUB_WORKER_IDLE_REBUILD_SECS` (60).
    pub fn from_env() -> anyhow::Result<Self> {
        let addrs: Vec<String> = required("IHUB_WORKER_ADDR")?
            .split(',')
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| {
                if a.contains("://") {
                    a.to_string()
                } else {
                    format!("https://{a}")
                }
            })
            .collect();
        Ok(Self {
            addrs,
            ca_pem: pem("IHUB_WORKER_CA")?,
            cert_pem: pem("IHUB_WORKER_CLIENT_CERT")?,
            key_pem: pem("IHUB_WORKER_CLIENT_KEY")?,
            server_name: var("IHUB_WORKER_TLS_SERVER_NAME").unwrap_or_else(|| "localhost".into()),
            timeout: Duration::from_millis(parsed("IHUB_WORKER_TIMEOUT_MS", 5000)?),
            connect_timeout: Duration::from_millis(parsed("IHUB_WORKER_CONNECT_TIMEOUT_MS", 1000)?),
            idle_rebuild: Duration::from_secs(parsed("IHUB_WORKER_IDLE_REBUILD_SECS", 60)?),
        })
    }
}

/// Request limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest prompt accepted (also capped by what the worker advertises).
    pub max_prompt_bytes: usize,
    /// Most inputs in one batch request.
    pub max_batch_inputs: usize,
    /// How long the model catalogue is cached.
    pub catalog_ttl: Duration,
}

impl ApiConfig {
    /// `IHUB_MAX_BODY_BYTES` (65536), `IHUB_MAX_PROMPT_BYTES` (16384),
    /// `IHUB_MAX_BATCH_INPUTS` (32), `IHUB_CATALOG_TTL_SECS` (60).
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            max_body_bytes: parsed("IHUB_MAX_BODY_BYTES", 64 * 1024)?,
            max_prompt_bytes: parsed("IHUB_MAX_PROMPT_BYTES", 16 * 1024)?,
            max_batch_inputs: parsed("IHUB_MAX_BATCH_INPUTS", 32)?,
            catalog_ttl: Duration::from_secs(parsed("IHUB_CATALOG_TTL_SECS", 60)?),
        })
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_prompt_bytes: 16 * 1024,
            max_batch_inputs: 32,
            catalog_ttl: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
