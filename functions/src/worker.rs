//! The gRPC client to the model workers: mutual TLS, built once per cold start with the
//! TLS handshake done during init, a deadline on every call, round robin over several
//! workers, and connections rebuilt when they sat idle longer than a configured time (a
//! frozen Lambda's connections are often dropped by load balancers in between).
//!
//! Failover: an attempt that fails with UNAVAILABLE or outlasts the per-attempt timeout
//! (a frozen worker: TCP open, no answers) is retried once on another worker, on a fresh
//! connection, inside the same deadline. A worker that failed [`EJECT_AFTER`] times in a
//! row, or timed out once, is skipped for [`EJECT_BASE`], doubling up to [`EJECT_MAX`] while it keeps failing.
//! When that time is up, a health check (not a live call) probes it: SERVING brings it
//! back, anything else ejects it again for longer. When every worker is ejected, calls
//! still go to the one due back first rather than failing.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{
    ListModelsRequest, ModelInfo, PredictBatchRequest, PredictBatchResponse,
};
use inferencehub_proto::settings::ClientPems;
use inferencehub_proto::{ErrorKind, FieldError, REQUEST_ID_METADATA, field_errors};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::WorkerConfig;

/// A failed worker call.
#[derive(Debug, Clone)]
pub struct WorkerError {
    /// The gRPC code (transport failures are UNAVAILABLE, timeouts DEADLINE_EXCEEDED).
    pub code: Code,
    /// The worker's message: logged, never shown to clients.
    pub message: String,
    /// The fields at fault, from the status's `google.rpc.BadRequest` details, in the
    /// worker's terms (`features[2]`, `prompts[1]`, `rows[0].features`).
    pub fields: Vec<FieldError>,
}

impl WorkerError {
    /// An error with no field details.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// How the gateway classifies it.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_grpc(self.code)
    }

    /// From a worker's status, reading its rich error details.
    pub fn from_status(status: &Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_string(),
            fields: field_errors(status),
        }
    }
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// What the handlers need from the workers.
pub trait Worker: Send + Sync {
    /// Inputs for one model, one result each (a single input is a batch of one).
    fn predict_batch(
        &self,
        request: PredictBatchRequest,
        request_id: &str,
    ) -> impl Future<Output = Result<PredictBatchResponse, WorkerError>> + Send;
    /// The model catalogue.
    fn list_models(&self) -> impl Future<Output = Result<Vec<ModelInfo>, WorkerError>> + Send;
    /// Whether a worker answers SERVING.
    fn serving(&self) -> impl Future<Output = Result<bool, WorkerError>> + Send;
}

/// A shared worker client is a worker client.
impl<W: Worker> Worker for Arc<W> {
    fn predict_batch(
        &self,
        request: PredictBatchRequest,
        request_id: &str,
    ) -> impl Future<Output = Result<PredictBatchResponse, WorkerError>> + Send {
        self.as_ref().predict_batch(request, request_id)
    }
    fn list_models(&self) -> impl Future<Output = Result<Vec<ModelInfo>, WorkerError>> + Send {
        self.as_ref().list_models()
    }
    fn serving(&self) -> impl Future<Output = Result<bool, WorkerError>> + Send {
        self.as_ref().serving()
    }
}

/// Consecutive failures after which a worker is skipped.
pub const EJECT_AFTER: u32 = 2;
/// First ejection time; doubles with every further failure.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
/// Longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

struct Slot {
    channel: Channel,
    last_used: Instant,
    /// Failed attempts in a row.
    failures: u32,
    /// Skipped until then.
    ejected_until: Option<Instant>,
    /// Its connection failed: build a new one before the next call.
    stale: bool,
    /// A health check of this ejected worker is under way.
    probing: bool,
}

struct Inner {
    config: WorkerConfig,
    addrs: Vec<String>,
    endpoints: Vec<Endpoint>,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    failovers: std::sync::atomic::AtomicU64,
}

/// The tonic client. Cheap to clone.
#[derive(Clone)]
pub struct GrpcWorker {
    inner: Arc<Inner>,
}

impl GrpcWorker {
    /// Builds one channel per address and connects them now (TLS handshake included), so
    /// the first request of a cold start does not pay for it. An address that cannot be
    /// reached now is logged and connected lazily later.
    pub async fn connect(config: WorkerConfig) -> anyhow::Result<Self> {
        let pems = crate::secrets::worker_client_pems(&config).await?;
        Self::connect_with(config, pems).await
    }

    /// [`GrpcWorker::connect`] with TLS material already read.
    pub async fn connect_with(config: WorkerConfig, pems: ClientPems) -> anyhow::Result<Self> {
        crate::crypto::install_crypto_provider();
        let addrs = config.urls()?;
        if addrs.is_empty() {
            anyhow::bail!("no worker address configured");
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pems.ca))
            .identity(Identity::from_pem(&pems.cert, &pems.key))
            .domain_name(config.tls.server_name.clone());
        let mut endpoints = Vec::new();
        for addr in &addrs {
            endpoints.push(
                Endpoint::from_shared(addr.clone())?
                    .connect_timeout(config.connect_timeout)
                    .timeout(config.timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(false)
                    .tls_config(tls.clone())?,
            );
        }
        let mut slots = Vec::new();
        for (endpoint, addr) in endpoints.iter().zip(&addrs) {
            let channel = match endpoint.connect().await {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!(worker = %addr, error = %e, "worker not reachable at init");
                    endpoint.connect_lazy()
                }
            };
            slots.push(Mutex::new(Slot {
                channel,
                last_used: Instant::now(),
                failures: 0,
                ejected_until: None,
                stale: false,
                probing: false,
            }));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                addrs,
                endpoints,
                slots,
                next: AtomicUsize::new(0),
                failovers: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The channel of slot `i`, rebuilt first when it idled too long, its last attempt
    /// failed, or `fresh` is set.
    fn channel(&self, i: usize, fresh: bool) -> Channel {
        let inner = &self.inner;
        let mut slot = inner.slots[i].lock().unwrap_or_else(|p| p.into_inner());
        if fresh || slot.stale || slot.last_used.elapsed() > inner.config.idle_rebuild {
            slot.channel = inner.endpoints[i].connect_lazy();
            slot.stale = false;
        }
        slot.last_used = Instant::now();
        slot.channel.clone()
    }

    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.inner.slots[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Calls retried on another worker (or a new connection) since the cold start.
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.load(Ordering::Relaxed)
    }

    /// The next worker to try, round robin over the ones not ejected, skipping `not`; an
    /// ejected worker whose time is up gets a health probe, not this call. When all are
    /// ejected, the one due back first.
    fn pick(&self, not: Option<usize>) -> Option<usize> {
        let n = self.inner.slots.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let candidates = (0..n).map(|k| (start + k) % n).filter(|&i| Some(i) != not);
        let mut due_first: Option<(usize, Instant)> = None;
        for i in candidates {
            let mut slot = self.lock(i);
            let Some(until) = slot.ejected_until else {
                return Some(i);
            };
            if until <= now && !slot.probing {
                slot.probing = true;
                drop(slot);
                self.probe(i);
            }
            if due_first.is_none_or(|(_, best)| until < best) {
                due_first = Some((i, until));
            }
        }
        due_first.map(|(i, _)| i)
    }

    /// Checks an ejected worker's health on a new connection, in the background: SERVING
    /// brings it back (with that connection), anything else ejects it for longer.
    fn probe(&self, i: usize) {
        let this = self.clone();
        tokio::spawn(async move {
            let endpoint = this.inner.endpoints[i].clone();
            let check = async {
                let channel = endpoint.connect().await.ok()?;
                let status = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .status();
                (status == ServingStatus::Serving).then_some(channel)
            };
            let back = tokio::time::timeout(this.inner.config.attempt_timeout, check)
                .await
                .ok()
                .flatten();
            let mut slot = this.lock(i);
            slot.probing = false;
            match back {
                Some(channel) => {
                    slot.channel = channel;
                    slot.stale = false;
                    slot.last_used = Instant::now();
                    slot.failures = 0;
                    slot.ejected_until = None;
                    tracing::info!(worker = %this.inner.addrs[i], "worker back: SERVING again");
                }
                None => {
                    drop(slot);
                    this.failed(i, true);
                }
            }
        });
    }

    fn succeeded(&self, i: usize) {
        let mut slot = self.lock(i);
        slot.failures = 0;
        slot.ejected_until = None;
    }

    /// Counts a failed attempt; its connection may be stuck, so the next call there builds
    /// a new one.
    /// With `at_once` (an attempt that timed out: the worker holds the connection and does
    /// not answer, so every call sent there costs a whole attempt) it is ejected now.
    fn failed(&self, i: usize, at_once: bool) {
        let mut slot = self.lock(i);
        slot.stale = true;
        slot.failures = slot.failures.saturating_add(1);
        if at_once {
            slot.failures = slot.failures.max(EJECT_AFTER);
        }
        if slot.failures >= EJECT_AFTER {
            let doublings = (slot.failures - EJECT_AFTER).min(5);
            let pause = (EJECT_BASE * 2u32.pow(doublings)).min(EJECT_MAX);
            slot.ejected_until = Some(Instant::now() + pause);
            tracing::warn!(worker = %self.inner.addrs[i], failures = slot.failures, pause_ms = pause.as_millis() as u64, "worker ejected");
        }
    }

    /// Runs `call` against the next worker; when it fails with UNAVAILABLE or outlasts the
    /// attempt timeout, once more against another on a fresh connection, within the same
    /// overall deadline.
    async fn call<T, F, Fut>(&self, request_id: &str, call: F) -> Result<T, WorkerError>
    where
        F: Fn(Channel, tonic::metadata::MetadataMap, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.config.timeout;
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Ok(v) = request_id.parse() {
            metadata.insert(REQUEST_ID_METADATA, v);
        }
        let mut last = None;
        let mut tried = None;
        for attempt in 0..2 {
            let Some(slot) = self.pick(tried).or(tried) else {
                break;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if attempt > 0 {
                self.inner.failovers.fetch_add(1, Ordering::Relaxed);
            }
            // The first attempt leaves room for a second; the second takes what is left.
            let budget = if attempt == 0 {
                left.min(self.inner.config.attempt_timeout)
            } else {
                left
            };
            // A retry on the same worker (the only one) goes over a new connection.
            let channel = self.channel(slot, Some(slot) == tried);
            // `None`: the attempt ran out of time, by our timer or the channel's own
            // grpc-timeout, which may fire a moment before it.
            let outcome =
                match tokio::time::timeout(budget, call(channel, metadata.clone(), budget)).await {
                    Ok(Err(status)) if client_timeout(&status) => None,
                    Ok(result) => Some(result),
                    Err(_) => None,
                };
            match outcome {
                Some(Ok(value)) => {
                    self.succeeded(slot);
                    return Ok(value);
                }
                Some(Err(status)) if transport_failure(&status) => {
                    tracing::warn!(worker = %self.inner.addrs[slot], error = %status.message(), "worker unavailable");
                    self.failed(slot, false);
                    let mut error = WorkerError::from_status(&status);
                    error.code = Code::Unavailable;
                    last = Some(error);
                }
                Some(Err(status)) => {
                    // The worker answered: it is alive, whatever it said.
                    if status.code() != Code::DeadlineExceeded {
                        self.succeeded(slot);
                    }
                    return Err(WorkerError::from_status(&status));
                }
                None if budget < left => {
                    tracing::warn!(worker = %self.inner.addrs[slot], timeout_ms = budget.as_millis() as u64, "worker attempt timed out; retrying on another");
                    self.failed(slot, true);
                    last = Some(WorkerError::new(
                        Code::DeadlineExceeded,
                        "worker attempt timed out",
                    ));
                }
                None => {
                    self.failed(slot, false);
                    return Err(WorkerError::new(
                        Code::DeadlineExceeded,
                        "worker deadline passed",
                    ));
                }
            }
            tried = Some(slot);
        }
        Err(last
            .unwrap_or_else(|| WorkerError::new(Code::DeadlineExceeded, "worker deadline passed")))
    }
}

/// Whether a failed call says the worker or its connection is gone, rather than the worker
/// answering: UNAVAILABLE; CANCELLED (this client never cancels a call, and its own
/// timeouts are sorted out before, so the connection went away under it); UNKNOWN raised
/// by the transport itself (a connection reset mid-call: it carries the transport error as
/// its source, which a status sent by a worker never does). Predictions are idempotent, so such a call is safe to retry.
fn transport_failure(status: &Status) -> bool {
    use std::error::Error;
    match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => status.source().is_some(),
        _ => false,
    }
}

/// Whether a failed call is this client's own timeout (tonic reports the expiry of a
/// request's grpc-timeout as CANCELLED "Timeout expired", with the cause as its source).
fn client_timeout(status: &Status) -> bool {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
        .any(|e| e.is::<tonic::TimeoutExpired>())
}

fn request<T>(
    message: T,
    metadata: tonic::metadata::MetadataMap,
    timeout: Duration,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = metadata;
    request.set_timeout(timeout);
    request
}

impl Worker for GrpcWorker {
    async fn predict_batch(
        &self,
        message: PredictBatchRequest,
        request_id: &str,
    ) -> Result<PredictBatchResponse, WorkerError> {
        self.call(request_id, |channel, metadata, timeout| {
            let message = message.clone();
            async move {
                let mut client = ModelInferenceClient::new(channel);
                Ok(client
                    .predict_batch(request(message, metadata, timeout))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    async fn list_models(&self) -> Result<Vec<ModelInfo>, WorkerError> {
        self.call("", |channel, metadata, timeout| async move {
            let mut client = ModelInferenceClient::new(channel);
            Ok(client
                .list_models(request(ListModelsRequest {}, metadata, timeout))
                .await?
                .into_inner()
                .models)
        })
        .await
    }

    async fn serving(&self) -> Result<bool, WorkerError> {
        self.call("", |channel, metadata, timeout| async move {
            let mut client = HealthClient::new(channel);
            let status = client
                .check(request(
                    HealthCheckRequest {
                        service: String::new(),
                    },
                    metadata,
                    timeout,
                ))
                .await?
                .into_inner()
                .status();
            Ok(status == ServingStatus::Serving)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channels_own_timeout_counts_as_a_timeout_and_nothing_else_does() {
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), Code::Cancelled);
        assert!(client_timeout(&expired));
        assert!(!client_timeout(&Status::cancelled("Timeout expired")));
        assert!(!client_timeout(&Status::deadline_exceeded("worker busy")));
        assert!(!client_timeout(&Status::unavailable("connection refused")));
    }
}
