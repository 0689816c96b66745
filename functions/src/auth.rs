//! Bearer-token authentication: JWTs verified against a JWKS (RS256, ES256, EdDSA), with
//! exact `iss`/`aud`, required `exp`, honoured `nbf` and a small leeway. The algorithm
//! comes from the key, never from the token, so `alg: none` and HMAC-with-a-public-key
//! tokens cannot pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind as JwtError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::{AuthConfig, JwksSource};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The `sub` claim: whom rate limits count against.
    pub sub: String,
    /// Scopes from `scope` (space-separated) or `scp`.
    pub scopes: Vec<String>,
    /// Rate-limit tier from the configured claim.
    pub tier: Option<String>,
}

impl Caller {
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `model:<name>` scopes restrict a token to those models; without any, all are allowed.
    pub fn may_use_model(&self, model: &str) -> bool {
        let mut restricted = self
            .scopes
            .iter()
            .filter_map(|s| s.strip_prefix("model:"))
            .peekable();
        restricted.peek().is_none() || restricted.any(|m| m == model)
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A token was sent but is not acceptable; the text says why.
    #[error("{0}")]
    Invalid(String),
    /// The signing keys are older than `IHUB_GATEWAY_JWKS_MAX_AGE` and could not be
    /// fetched again: no token is trusted until they are (the server's fault, not the
    /// caller's).
    #[error("the token signing keys could not be refreshed; try again shortly")]
    KeysStale,
}

/// Most bytes of a JWKS answer read: a key set is a few KiB, and a larger answer is refused
/// rather than held in memory.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

struct VerifyKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// When the JWKS was fetched, and how that went.
#[derive(Default)]
struct FetchState {
    /// The last fetch started (successful or not).
    attempt: Option<Instant>,
    /// The last fetch that installed keys.
    success: Option<Instant>,
    /// Failed fetches since the last success.
    failures: u32,
}

/// Least time between two fetches, whatever triggers them.
const MIN_FETCH_GAP: Duration = Duration::from_secs(1);

/// Verifies bearer tokens. Built once per cold start.
///
/// A JWKS URL is fetched at cold start, again once the keys are older than the refresh
/// interval (so a removed key stops being trusted), again when a token names an unknown
/// `kid` (at most once per refetch interval), and after a failure with a backoff of 1, 2,
/// 4 … seconds (capped at the refetch interval). A set with no usable key never replaces
/// the keys in use.
pub struct Authenticator {
    config: AuthConfig,
    jwks: JwksSource,
    keys: RwLock<HashMap<String, Arc<VerifyKey>>>,
    fetches: Mutex<FetchState>,
    http: Option<reqwest::Client>,
}

/// The `Authorization` header of `req`, when it is text.
pub fn authorization<B>(req: &http::Request<B>) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

impl Authenticator {
    /// Loads the key set: a file must parse; a URL that cannot be fetched now is logged
    /// and fetched again on the first token (at most once a minute).
    pub async fn new(config: AuthConfig) -> anyhow::Result<Self> {
        crate::crypto::install_crypto_provider();
        let jwks = config.jwks()?;
        anyhow::ensure!(
            config.max_key_age > config.refresh_interval,
            "IHUB_GATEWAY_JWKS_MAX_AGE must be longer than IHUB_GATEWAY_JWKS_REFRESH (keys \
             would stop being trusted before they are refreshed)"
        );
        let http = match &jwks {
            JwksSource::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    // A redirect could lead anywhere, plaintext included: not followed.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?,
            ),
            JwksSource::File(_) => None,
        };
        let auth = Self {
            config,
            jwks,
            keys: RwLock::new(HashMap::new()),
            fetches: Mutex::new(FetchState::default()),
            http,
        };
        match &auth.jwks {
            JwksSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
                auth.install(&set)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            JwksSource::Url(_) => {
                auth.claim_fetch(false);
                if let Err(e) = auth.fetch().await {
                    tracing::warn!(error = %e, "JWKS fetch at cold start failed; will retry");
                }
            }
        }
        Ok(auth)
    }

    /// An authenticator over a fixed key set (tests, benchmarks).
    pub fn with_jwks(config: AuthConfig, set: &JwkSet) -> Self {
        let auth = Self {
            jwks: JwksSource::File(std::path::PathBuf::new()),
            config,
            keys: RwLock::new(HashMap::new()),
            fetches: Mutex::new(FetchState::default()),
            http: None,
        };
        if let Err(e) = auth.install(set) {
            tracing::warn!(error = %e, "no usable key in the given set");
        }
        auth
    }

    /// Number of usable keys loaded.
    pub fn key_count(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    /// Installs the usable keys of `set`; a set with none is refused and changes nothing.
    fn install(&self, set: &JwkSet) -> anyhow::Result<()> {
        let keys = usable_keys(set);
        if keys.is_empty() {
            anyhow::bail!(
                "the JWKS holds no usable key ({} in the set); keeping the keys in use",
                set.keys.len()
            );
        }
        tracing::info!(keys = keys.len(), "JWKS loaded");
        if let Ok(mut current) = self.keys.write() {
            *current = keys;
        }
        Ok(())
    }

    /// Fetches and installs the JWKS (URL sources only), recording the outcome for the
    /// backoff. Callers claim the attempt first ([`Self::claim_fetch`]).
    async fn fetch(&self) -> anyhow::Result<()> {
        let (Some(http), JwksSource::Url(url)) = (&self.http, &self.jwks) else {
            return Ok(());
        };
        let result = async {
            let mut response = http.get(url).send().await?.error_for_status()?;
            if response
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                anyhow::bail!("the JWKS answer is larger than {MAX_JWKS_BYTES} bytes");
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    anyhow::bail!("the JWKS answer is larger than {MAX_JWKS_BYTES} bytes");
                }
                body.extend_from_slice(&chunk);
            }
            let set: JwkSet = serde_json::from_slice(&body)?;
            self.install(&set)
        }
        .await;
        if let Ok(mut state) = self.fetches.lock() {
            match &result {
                Ok(()) => {
                    state.success = Some(Instant::now());
                    state.failures = 0;
                }
                Err(_) => state.failures = state.failures.saturating_add(1),
            }
        }
        result
    }

    /// Decides whether a fetch is due now and, if so, claims it (one step, so a burst of
    /// requests triggers one fetch). Due: never fetched; keys older than the refresh
    /// interval, or no keys since a failure, once the backoff has passed; or, for an
    /// unknown `kid`, once the refetch interval has passed.
    fn claim_fetch(&self, unknown_kid: bool) -> bool {
        let Ok(mut state) = self.fetches.lock() else {
            return false;
        };
        let now = Instant::now();
        let stale = state
            .success
            .is_none_or(|t| now.duration_since(t) >= self.config.refresh_interval);
        let backoff = if state.failures == 0 {
            MIN_FETCH_GAP
        } else {
            (MIN_FETCH_GAP * 2u32.saturating_pow(state.failures - 1).min(1 << 20))
                .min(self.config.refetch_interval)
                .max(MIN_FETCH_GAP)
        };
        let due = match state.attempt.map(|t| now.duration_since(t)) {
            None => true,
            Some(since) if stale => since >= backoff,
            Some(since) => unknown_kid && since >= self.config.refetch_interval,
        };
        if due {
            state.attempt = Some(now);
        }
        due
    }

    /// Refreshes the keys when they are due (URL sources only).
    async fn refresh_if_due(&self) {
        if self.http.is_some()
            && self.claim_fetch(false)
            && let Err(e) = self.fetch().await
        {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys in use");
        }
    }

    /// Whether keys fetched from a URL are older than the maximum age (every refresh since
    /// failed), so a key the provider withdrew is not trusted forever.
    fn keys_stale(&self) -> bool {
        self.http.is_some()
            && self.fetches.lock().is_ok_and(|state| {
                state
                    .success
                    .is_some_and(|t| t.elapsed() > self.config.max_key_age)
            })
    }

    fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    async fn key_refetching(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        if let Some(key) = self.key(kid) {
            return Some(key);
        }
        if self.http.is_some() && self.claim_fetch(true) {
            if let Err(e) = self.fetch().await {
                tracing::warn!(error = %e, "JWKS refetch failed");
            }
            return self.key(kid);
        }
        None
    }

    /// Checks an `Authorization` header value and returns the caller.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let value = authorization.map(str::trim).unwrap_or_default();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ if value.is_empty() => return Err(AuthError::Missing),
            _ => return Err(invalid("the Authorization header must be `Bearer <token>`")),
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed token or unsupported algorithm"))?;
        if has_critical_parameters(token) {
            // RFC 7515 §4.1.11: a recipient must refuse extensions it does not understand,
            // and this gateway understands none.
            return Err(invalid(
                "critical header parameters (crit) are not supported",
            ));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("token has no kid"))?;
        if let Some(wanted) = self
            .config
            .required_typ
            .as_deref()
            .filter(|w| !w.is_empty())
            && !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(wanted))
        {
            return Err(invalid("wrong token type (typ)"));
        }
        self.refresh_if_due().await;
        if self.keys_stale() {
            return Err(AuthError::KeysStale);
        }
        let key = self
            .key_refetching(kid)
            .await
            .ok_or_else(|| invalid("unknown signing key (kid)"))?;
        if header.alg != key.alg {
            return Err(invalid("algorithm not allowed for this key"));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.config.issuer]);
        // The audience is checked below, where a Cognito access token may name it by
        // `client_id` instead of `aud`.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let claims =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| invalid(describe(e.kind())))?
                .claims;
        if let Some(wanted) = self
            .config
            .required_token_use
            .as_deref()
            .filter(|w| !w.is_empty())
            && claims.get("token_use").and_then(Value::as_str) != Some(wanted)
        {
            return Err(invalid("wrong token_use"));
        }
        check_audience(&claims, &self.config.audience)?;
        caller_from(&claims, &self.config.tier_claim)
    }
}

/// Whether the token's protected header holds a `crit` member (which `jsonwebtoken`'s
/// `Header` does not keep).
fn has_critical_parameters(token: &str) -> bool {
    use base64::Engine as _;
    let Some(segment) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes).ok())
        .is_some_and(|header| header.contains_key("crit"))
}

/// The token is for this API: its `aud` (a string or an array) holds the audience, or,
/// for an Amazon Cognito access token (`token_use: access`, which carries no `aud`), its
/// `client_id` is the audience (the app client's id). A token with `aud` is judged by `aud`
/// alone, so `client_id` never widens what an audience-bearing token may do.
fn check_audience(
    claims: &serde_json::Map<String, Value>,
    audience: &str,
) -> Result<(), AuthError> {
    match claims.get("aud") {
        Some(Value::String(aud)) if aud == audience => Ok(()),
        Some(Value::Array(auds)) if auds.iter().any(|a| a.as_str() == Some(audience)) => Ok(()),
        Some(_) => Err(invalid("wrong audience")),
        None if claims.get("token_use").and_then(Value::as_str) == Some("access") => {
            match claims.get("client_id").and_then(Value::as_str) {
                Some(client) if client == audience => Ok(()),
                Some(_) => Err(invalid("wrong audience (client_id)")),
                None => Err(invalid(
                    "a Cognito access token must carry client_id (it has no aud)",
                )),
            }
        }
        None => Err(invalid("a required claim (exp, iss, aud, sub) is missing")),
    }
}

fn invalid(message: &str) -> AuthError {
    AuthError::Invalid(message.to_string())
}

fn describe(kind: &JwtError) -> &'static str {
    match kind {
        JwtError::ExpiredSignature => "token expired",
        JwtError::ImmatureSignature => "token not yet valid (nbf)",
        JwtError::InvalidIssuer => "wrong issuer",
        JwtError::InvalidAudience => "wrong audience",
        JwtError::InvalidSignature => "invalid signature",
        JwtError::InvalidAlgorithm | JwtError::MissingAlgorithm => "algorithm not allowed",
        JwtError::MissingRequiredClaim(_) => "a required claim (exp, iss, aud, sub) is missing",
        _ => "malformed token",
    }
}

fn caller_from(
    claims: &serde_json::Map<String, Value>,
    tier_claim: &str,
) -> Result<Caller, AuthError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("sub must be a non-empty string"))?;
    let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let tier = claims
        .get(tier_claim)
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Caller {
        sub: sub.to_string(),
        scopes,
        tier,
    })
}

/// The keys of a JWKS this gateway accepts, by `kid`: RSA (RS256), EC P-256 (ES256) and
/// Ed25519 (EdDSA) signing keys. Others are skipped.
fn usable_keys(set: &JwkSet) -> HashMap<String, Arc<VerifyKey>> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (alg, declared) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                (Algorithm::ES256, KeyAlgorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
            }
            _ => continue,
        };
        if jwk.common.key_algorithm.is_some_and(|a| a != declared) {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(VerifyKey { key, alg }));
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWK"),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &[&str]) -> Caller {
        Caller {
            sub: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            tier: None,
        }
    }

    #[test]
    fn model_scopes_restrict_only_when_present() {
        assert!(caller(&["predict"]).may_use_model("iris"));
        let restricted = caller(&["predict", "model:iris"]);
        assert!(restricted.may_use_model("iris"));
        assert!(!restricted.may_use_model("sentiment"));
    }

    #[test]
    fn scopes_come_from_a_string_or_an_array() {
        let claims = serde_json::json!({"sub": "a", "scope": "predict model:x", "tier": "pro"});
        let c = caller_from(claims.as_object().unwrap(), "tier").unwrap();
        assert_eq!(c.scopes, ["predict", "model:x"]);
        assert_eq!(c.tier.as_deref(), Some("pro"));
        let claims = serde_json::json!({"sub": "a", "scp": ["predict"]});
        let c = caller_from(claims.as_object().unwrap(), "tier").unwrap();
        assert!(c.has_scope("predict"));
        let claims = serde_json::json!({"sub": ""});
        assert!(caller_from(claims.as_object().unwrap(), "tier").is_err());
    }
}
