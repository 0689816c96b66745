//! Per-caller rate limits.
//!
//! Algorithm: a fixed-window counter of inputs. The item for (window, caller) is
//! incremented with one atomic conditional `UpdateItem` — `ADD hits :n` only if
//! `hits + n <= limit` — so under any concurrency at most `limit` inputs per window are
//! admitted; a request costs its number of inputs (a batch of 32 costs 32). Items carry an
//! `expires_at` TTL attribute and disappear after their window. A fixed window may admit
//! up to 2x the limit across a window boundary; in exchange it costs exactly one write per
//! request and no read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

/// The limit applied to one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Tier name, shown in `RateLimit-Policy`.
    pub name: String,
    /// Inputs per window.
    pub limit: u32,
    /// Window length.
    pub window: Duration,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Inputs left in this window after this request.
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// The limiter's store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate-limit store unavailable: {message}")]
pub struct StoreUnavailable {
    /// What went wrong.
    pub message: String,
    /// A timeout or a transport failure: the store may be fine a moment later, and only
    /// these may fail open. A refusal by the store (throttling, a bad key, a missing
    /// table) never turns the limit off.
    pub transient: bool,
}

impl StoreUnavailable {
    /// A timeout or transport failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }

    /// An answer from the store that refuses the write.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

/// The table key of `caller` in window `index`: the window, then a SHA-256 of the caller
/// (fixed size whatever the `sub`, and no user ids stored in the table).
pub fn counter_key(index: u64, caller: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(caller.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{index}#{hex}")
}

/// Counts inputs per caller.
pub trait RateLimiter: Send + Sync {
    /// Counts a request of `cost` inputs (at least 1) by `caller` against `policy`: all of
    /// them are admitted, or none.
    fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, StoreUnavailable>> + Send;
}

/// Current window's index and the seconds left in it.
fn window(now: SystemTime, window: Duration) -> (u64, u64) {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let len = window.as_secs().max(1);
    (secs / len, len - secs % len)
}

/// The DynamoDB limiter (table key: `pk` string; TTL attribute: `expires_at`).
#[derive(Clone)]
pub struct DynamoLimiter {
    client: Client,
    table: String,
}

impl DynamoLimiter {
    /// A limiter on `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// A client from the standard AWS environment (`AWS_REGION`,
    /// `AWS_ENDPOINT_URL_DYNAMODB`, credentials), with a budget of `timeout` per attempt and
    /// no retries of its own: [`DynamoLimiter`] retries once itself, only after a timeout or
    /// a transport failure, so a refusal is never turned into a fail-open by a later timeout.
    pub async fn client_from_env(timeout: Duration) -> Client {
        let config = aws_sdk_dynamodb::config::Builder::from(crate::aws::sdk_config().await)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_millis(500)))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }
}

impl RateLimiter for DynamoLimiter {
    async fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> Result<Decision, StoreUnavailable> {
        let (index, reset_secs) = window(SystemTime::now(), policy.window);
        let cost = cost.max(1);
        let refused = Decision {
            allowed: false,
            remaining: 0,
            reset_secs,
        };
        // More than the whole window's allowance can never pass: no write.
        let Some(room) = policy.limit.checked_sub(cost) else {
            return Ok(refused);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let key = counter_key(index, caller);
        let expires_at = now + reset_secs + 60;
        // One retry, only after a timeout or a transport failure: an answer that refuses the
        // write (throttling, say) is final, so a later timeout cannot make it fail open.
        let mut result = self.write(&key, cost, room, expires_at).await;
        if matches!(&result, Err(e) if e.transient) {
            result = self.write(&key, cost, room, expires_at).await;
        }
        match result? {
            Some(hits) => Ok(Decision {
                allowed: true,
                remaining: policy.limit.saturating_sub(hits.unwrap_or(policy.limit)),
                reset_secs,
            }),
            None => Ok(refused),
        }
    }
}

impl DynamoLimiter {
    /// One conditional write of `cost` hits under `key`: `Some(hits after it)` when the
    /// condition held, `None` when the limit is reached.
    async fn write(
        &self,
        key: &str,
        cost: u32,
        room: u32,
        expires_at: u64,
    ) -> Result<Option<Option<u32>>, StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_string()))
            .update_expression("ADD hits :n SET expires_at = if_not_exists(expires_at, :exp)")
            // hits + n <= limit, written as hits <= limit - n.
            .condition_expression("attribute_not_exists(hits) OR hits <= :room")
            .expression_attribute_values(":n", AttributeValue::N(cost.to_string()))
            .expression_attribute_values(":room", AttributeValue::N(room.to_string()))
            .expression_attribute_values(":exp", AttributeValue::N(expires_at.to_string()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(
                out.attributes()
                    .and_then(|a| a.get("hits"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<u32>().ok()),
            )),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(None)
            }
            Err(e) => {
                let transient =
                    matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_));
                let message = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
                Err(StoreUnavailable { message, transient })
            }
        }
    }
}

/// Per-process counters, for local development only: every Lambda instance counts on its
/// own, so the effective limit grows with concurrency. Never use it in production.
#[derive(Default)]
pub struct MemoryLimiter {
    counts: Mutex<HashMap<(u64, String), u32>>,
}

impl RateLimiter for MemoryLimiter {
    async fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> Result<Decision, StoreUnavailable> {
        let (index, reset_secs) = window(SystemTime::now(), policy.window);
        let cost = cost.max(1);
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| StoreUnavailable::refused("poisoned"))?;
        counts.retain(|(i, _), _| *i >= index);
        let hits = counts.entry((index, caller.to_string())).or_insert(0);
        if hits.saturating_add(cost) > policy.limit {
            return Ok(Decision {
                allowed: false,
                remaining: policy.limit.saturating_sub(*hits),
                reset_secs,
            });
        }
        *hits += cost;
        Ok(Decision {
            allowed: true,
            remaining: policy.limit - *hits,
            reset_secs,
        })
    }
}

/// Either limiter, chosen by configuration at cold start.
pub enum AnyLimiter {
    /// Production.
    Dynamo(DynamoLimiter),
    /// Local development.
    Memory(MemoryLimiter),
}

impl RateLimiter for AnyLimiter {
    async fn check(
        &self,
        caller: &str,
        policy: &Policy,
        cost: u32,
    ) -> Result<Decision, StoreUnavailable> {
        match self {
            Self::Dynamo(l) => l.check(caller, policy, cost).await,
            Self::Memory(l) => l.check(caller, policy, cost).await,
        }
    }
}

/// `RateLimit-Policy` header value (draft-ietf-httpapi-ratelimit-headers).
pub fn policy_header(policy: &Policy) -> String {
    format!(
        "\"{}\";q={};w={}",
        policy.name,
        policy.limit,
        policy.window.as_secs()
    )
}

/// `RateLimit` header value.
pub fn state_header(policy: &Policy, decision: &Decision) -> String {
    format!(
        "\"{}\";r={};t={}",
        policy.name, decision.remaining, decision.reset_secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limit: u32) -> Policy {
        Policy {
            name: "default".into(),
            limit,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn windows_reset_on_their_boundary() {
        let t = UNIX_EPOCH + Duration::from_secs(125);
        assert_eq!(window(t, Duration::from_secs(60)), (2, 55));
        let t = UNIX_EPOCH + Duration::from_secs(120);
        assert_eq!(window(t, Duration::from_secs(60)), (2, 60));
    }

    #[tokio::test]
    async fn memory_limiter_admits_exactly_the_limit_per_caller() {
        let limiter = MemoryLimiter::default();
        let p = policy(3);
        let mut allowed = 0;
        for _ in 0..5 {
            if limiter.check("alice", &p, 1).await.unwrap().allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3);
        assert!(limiter.check("bob", &p, 1).await.unwrap().allowed);
        let d = limiter.check("alice", &p, 1).await.unwrap();
        assert_eq!(d.remaining, 0);
        assert!(d.reset_secs >= 1 && d.reset_secs <= 60);
        // A request costs its inputs, all or none.
        let d = limiter.check("carol", &p, 2).await.unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 1));
        let d = limiter.check("carol", &p, 2).await.unwrap();
        assert_eq!((d.allowed, d.remaining), (false, 1));
        assert!(limiter.check("carol", &p, 1).await.unwrap().allowed);
        assert!(!limiter.check("dave", &p, 4).await.unwrap().allowed);
    }

    #[test]
    fn counter_keys_have_a_fixed_size_and_hold_no_user_id() {
        let short = counter_key(7, "alice");
        let long = counter_key(7, &"x".repeat(2040));
        assert_eq!(short.len(), long.len());
        assert!(long.len() < 100);
        assert!(!short.contains("alice"));
        assert_ne!(short, counter_key(8, "alice"));
        assert_ne!(short, counter_key(7, "bob"));
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let p = policy(10);
        let d = Decision {
            allowed: true,
            remaining: 7,
            reset_secs: 42,
        };
        assert_eq!(policy_header(&p), "\"default\";q=10;w=60");
        assert_eq!(state_header(&p, &d), "\"default\";r=7;t=42");
    }
}
