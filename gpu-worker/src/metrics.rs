//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All worker metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// `inferencehub_worker_requests_total{model,version,code}`: answered calls by the
    /// version that computed them (`""` when none did) and gRPC code.
    pub requests: IntCounterVec,
    /// `inferencehub_worker_queue_wait_seconds{model,version}`: time from admission to
    /// batch start.
    pub queue_wait: HistogramVec,
    /// `inferencehub_worker_compute_seconds{model,version}`: forward-pass time per batch.
    pub compute: HistogramVec,
    /// `inferencehub_worker_batch_size{model,version}`: inputs per forward pass.
    pub batch_size: HistogramVec,
    /// `inferencehub_worker_queue_depth{model,version}`: inputs waiting for a forward pass.
    pub queue_depth: IntGaugeVec,
    /// `inferencehub_worker_model_resident_bytes{model,version}`: the bytes each served
    /// version's files take, held while it is loaded.
    pub resident_bytes: IntGaugeVec,
    /// `inferencehub_worker_model_stuck{model,version}`: 1 while a forward pass of the
    /// version has run past `--forward-deadline` (the model is not serving), else 0.
    pub stuck: IntGaugeVec,
    /// `inferencehub_worker_forward_stuck_total{model,version}`: forward passes that ran
    /// past `--forward-deadline`.
    pub stuck_total: IntCounterVec,
    /// `inferencehub_worker_in_flight`: inputs admitted and not yet answered (the
    /// autoscaling signal).
    pub in_flight: IntGauge,
    /// `inferencehub_worker_dropped_total{model,version,reason}`: inputs dropped before
    /// compute.
    pub dropped: IntCounterVec,
    /// `inferencehub_worker_connections_refused_total{reason}`: connections closed before
    /// a caller was served (`handshake_evicted`, `handshake_timeout`, `handshake_failed`,
    /// `connection_cap`).
    pub connections_refused: IntCounterVec,
    /// `inferencehub_worker_connections_handshaking`: connections in their TLS handshake,
    /// under --max-handshakes.
    pub connections_handshaking: IntGauge,
    /// `inferencehub_worker_connections_open`: authenticated connections, under
    /// --max-connections.
    pub connections_open: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "inferencehub_worker_requests_total",
                "Predict calls answered, by model, the version that answered, and gRPC code",
            ),
            &["model", "version", "code"],
        )?;
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["model", "version"],
            )
        };
        let queue_wait = histogram(
            "inferencehub_worker_queue_wait_seconds",
            "Time an input waited before its forward pass started",
            LATENCY_BUCKETS,
        )?;
        let compute = histogram(
            "inferencehub_worker_compute_seconds",
            "Duration of one batched forward pass",
            LATENCY_BUCKETS,
        )?;
        let batch_size = histogram(
            "inferencehub_worker_batch_size",
            "Inputs per forward pass",
            BATCH_BUCKETS,
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "inferencehub_worker_queue_depth",
                "Inputs waiting for a forward pass",
            ),
            &["model", "version"],
        )?;
        let resident_bytes = IntGaugeVec::new(
            Opts::new(
                "inferencehub_worker_model_resident_bytes",
                "Bytes of each loaded model version's files, held while it is served",
            ),
            &["model", "version"],
        )?;
        let stuck = IntGaugeVec::new(
            Opts::new(
                "inferencehub_worker_model_stuck",
                "1 while a forward pass of the version has run past --forward-deadline",
            ),
            &["model", "version"],
        )?;
        let stuck_total = IntCounterVec::new(
            Opts::new(
                "inferencehub_worker_forward_stuck_total",
                "Forward passes that ran past --forward-deadline",
            ),
            &["model", "version"],
        )?;
        registry.register(Box::new(stuck.clone()))?;
        registry.register(Box::new(stuck_total.clone()))?;
        let in_flight = IntGauge::new(
            "inferencehub_worker_in_flight",
            "Inputs admitted and not yet answered, all models",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "inferencehub_worker_dropped_total",
                "Inputs dropped before compute because the caller left or the deadline passed",
            ),
            &["model", "version", "reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(compute.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(resident_bytes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "inferencehub_worker_connections_refused_total",
                "Connections closed before the caller was authenticated, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let connections_open = IntGauge::new(
            "inferencehub_worker_connections_open",
            "Authenticated connections open, under --max-connections",
        )?;
        let connections_handshaking = IntGauge::new(
            "inferencehub_worker_connections_handshaking",
            "Connections in their TLS handshake, under --max-handshakes",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_handshaking.clone()))?;
        Ok(Self {
            registry,
            requests,
            queue_wait,
            compute,
            batch_size,
            queue_depth,
            resident_bytes,
            stuck,
            stuck_total,
            in_flight,
            dropped,
            connections_refused,
            connections_open,
            connections_handshaking,
        })
    }

    /// Counts a connection closed before authentication.
    pub fn refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `shutdown` resolves.
/// `/healthz` mirrors the grpc.health.v1 status (200 SERVING, 503 otherwise) for load
/// balancers that cannot speak gRPC health checks over mutual TLS (NLB target groups).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    serving: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let health = get(move || {
        let up = serving.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if up {
                (StatusCode::OK, "SERVING\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
            }
        }
    });
    let app = axum::Router::new().route("/healthz", health).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Prints one CloudWatch Embedded Metric Format line every `every`: inputs in flight and
/// queued, which CloudWatch turns into the metrics the ECS service scales on.
pub async fn emit_emf(
    metrics: std::sync::Arc<Metrics>,
    every: std::time::Duration,
    service: String,
) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        use prometheus::core::Collector;
        let queued: i64 = metrics
            .queue_depth
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let line = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": "InferenceHub/Worker",
                    "Dimensions": [["ServiceName"]],
                    "Metrics": [
                        {"Name": "InFlight", "Unit": "Count"},
                        {"Name": "QueueDepth", "Unit": "Count"}
                    ]
                }]
            },
            "ServiceName": service,
            "InFlight": metrics.in_flight.get(),
            "QueueDepth": queued,
        });
        println!("{line}");
    }
}
