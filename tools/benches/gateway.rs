//! Gateway benchmark (release build; `make bench-gateway`, needs `make models dynalite`).
//!
//! 1. The functions' own cost per request: the predict handler (inside the shared layers) in-process with a
//!    worker stub that answers instantly and the in-memory limiter, so what is measured
//!    is auth (signature check) + body parsing + validation + JSON encoding, no network.
//! 2. End to end: real HTTP through the gateway (auth, dynalite rate limit, mTLS gRPC) vs
//!    calling the worker directly over mTLS gRPC, in the same run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{AUDIENCE, ISSUER, Options, Stack};
use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_functions::auth::Authenticator;
use inferencehub_functions::catalog::Catalog;
use inferencehub_functions::config::{PredictConfig, from_vars};
use inferencehub_functions::layers::serve;
use inferencehub_functions::ratelimit::MemoryLimiter;
use inferencehub_functions::routes::Predict;
use inferencehub_functions::worker::{Worker, WorkerError};
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{
    FeatureRow, LabelScore, ModelInfo, ModelKind, PredictBatchRequest, PredictBatchResponse,
    PredictResponse,
};
use inferencehub_proto::settings::WorkerClientTls;
use jsonwebtoken::Algorithm;
use lambda_http::Body;

/// Answers at once: isolates the gateway's own work.
struct InstantWorker;

impl Worker for InstantWorker {
    async fn predict_batch(
        &self,
        r: PredictBatchRequest,
        _: &str,
    ) -> Result<PredictBatchResponse, WorkerError> {
        let answer = PredictResponse {
            probability: 0.97,
            label: "setosa".into(),
            latency_ms: 0.1,
            request_id: r.request_id.clone(),
            model_version: "0123456789ab".into(),
            scores: ["setosa", "versicolor", "virginica"]
                .iter()
                .zip([0.97, 0.02, 0.01])
                .map(|(l, p)| LabelScore {
                    label: l.to_string(),
                    probability: p,
                })
                .collect(),
            model_name: r.model_name.clone(),
            ..Default::default()
        };
        Ok(PredictBatchResponse {
            results: vec![answer; r.prompts.len() + r.rows.len()],
            request_id: r.request_id,
            model_name: r.model_name,
            model_version: "0123456789ab".into(),
            latency_ms: 0.1,
        })
    }
    async fn list_models(&self) -> Result<Vec<ModelInfo>, WorkerError> {
        Ok(vec![
            ModelInfo {
                name: "iris".into(),
                kind: ModelKind::Tabular as i32,
                feature_count: 4,
                ..Default::default()
            },
            ModelInfo {
                name: "sentiment".into(),
                kind: ModelKind::Text as i32,
                max_prompt_bytes: 65536,
                ..Default::default()
            },
        ])
    }
    async fn serving(&self) -> Result<bool, WorkerError> {
        Ok(true)
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64();
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
    (at(0.5), at(0.99), mean)
}

async fn own_cost(alg: Algorithm, body: &str, n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(alg, "bench").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&key]).to_string()).unwrap();
    let jwks_file = jwks_file.to_string_lossy().into_owned();
    let limit = u32::MAX.to_string();
    let config: PredictConfig = from_vars(&[
        ("IHUB_GATEWAY_JWT_ISSUER", ISSUER),
        ("IHUB_GATEWAY_JWT_AUDIENCE", AUDIENCE),
        ("IHUB_GATEWAY_JWKS_FILE", &jwks_file),
        ("IHUB_GATEWAY_WORKER_ADDRS", "unused:1"),
        ("IHUB_GATEWAY_RATE_LIMIT_BACKEND", "memory"),
        ("IHUB_GATEWAY_RATE_LIMIT_DEFAULT", &limit),
        ("IHUB_GATEWAY_RATE_LIMIT_WINDOW", "1h"),
        ("IHUB_GATEWAY_CATALOG_TTL", "1h"),
    ])
    .unwrap();
    let handler = Predict {
        auth: Arc::new(Authenticator::new(config.auth).await.unwrap()),
        limiter: MemoryLimiter::default(),
        worker: InstantWorker,
        catalog: Catalog::new(config.api.catalog_ttl),
        limits: config.limits,
        api: config.api,
    };
    let token = format!(
        "Bearer {}",
        key.sign(&claims(ISSUER, AUDIENCE, "bench", "predict", 3600, None))
            .unwrap()
    );
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let req = http::Request::builder()
            .method("POST")
            .uri("/v1/predict")
            .header("authorization", &token)
            .header("content-type", "application/json")
            .body(Body::Text(body.to_string()))
            .unwrap();
        let t = Instant::now();
        let response = serve(&handler, req).await;
        let elapsed = t.elapsed();
        assert_eq!(response.status(), 200);
        if i >= 200 {
            samples.push(elapsed);
        }
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    inferencehub_functions::emf::set_enabled(false);
    let n: usize = std::env::var("IHUB_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let iris = r#"{"model_name":"iris","features":[6.3,3.3,6.0,2.5]}"#;
    let sentiment = r#"{"model_name":"sentiment","prompt":"The support team fixed my problem in minutes, thank you!"}"#;

    println!(
        "\n1. The functions' own cost per request (in-process, worker stubbed, {n} requests each)"
    );
    println!(
        "| {:<34} | {:>9} | {:>9} | {:>9} |",
        "request", "p50 µs", "p99 µs", "mean µs"
    );
    println!("|{:-<36}|{:->11}|{:->11}|{:->11}|", "", "", "", "");
    for (alg, body, label) in [
        (Algorithm::ES256, iris, "iris, ES256 token"),
        (Algorithm::RS256, iris, "iris, RS256 token"),
        (Algorithm::EdDSA, iris, "iris, EdDSA token"),
        (Algorithm::ES256, sentiment, "sentiment, ES256 token"),
    ] {
        let (p50, p99, mean) = percentiles(own_cost(alg, body, n).await);
        println!(
            "| {label:<34} | {:>9.1} | {:>9.1} | {:>9.1} |",
            p50 * 1e6,
            p99 * 1e6,
            mean * 1e6
        );
    }

    // 2. End to end, same run, same worker.
    let stack = Stack::start(Options {
        limit: 1_000_000,
        ..Options::default()
    })
    .await;
    let worker = stack.worker.as_ref().unwrap();
    let certs = &stack.certs;
    let channel = inferencehub_worker::client::connect(
        &format!("https://{}", worker.grpc_addr),
        &WorkerClientTls::from_files(&certs.ca, &certs.client_cert, &certs.client_key),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut direct = ModelInferenceClient::new(channel);
    let token = stack.keys.token("bench", "predict");
    let e2e_n = (n / 10).max(100);
    println!("\n2. End to end on loopback, sequential, {e2e_n} requests each");
    println!(
        "| {:<54} | {:>8} | {:>8} | {:>8} |",
        "path", "p50 ms", "p99 ms", "mean ms"
    );
    println!("|{:-<56}|{:->10}|{:->10}|{:->10}|", "", "", "", "");
    for (model, body, message) in [
        (
            "iris",
            iris,
            PredictBatchRequest {
                model_name: "iris".into(),
                rows: vec![FeatureRow {
                    features: vec![6.3, 3.3, 6.0, 2.5],
                }],
                ..Default::default()
            },
        ),
        (
            "sentiment",
            sentiment,
            PredictBatchRequest {
                model_name: "sentiment".into(),
                prompts: vec!["The support team fixed my problem in minutes, thank you!".into()],
                ..Default::default()
            },
        ),
    ] {
        let mut direct_samples = Vec::new();
        let mut gateway_samples = Vec::new();
        for i in 0..e2e_n + 20 {
            let t = Instant::now();
            direct.predict_batch(message.clone()).await.unwrap();
            let d = t.elapsed();
            let t = Instant::now();
            let r = stack.post(Some(&token), body).await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            let g = t.elapsed();
            if i >= 20 {
                direct_samples.push(d);
                gateway_samples.push(g);
            }
        }
        for (label, samples) in [
            (
                format!("{model}: worker direct (gRPC + mTLS)"),
                direct_samples,
            ),
            (
                format!("{model}: through the gateway (HTTP, auth, DynamoDB)"),
                gateway_samples,
            ),
        ] {
            let (p50, p99, mean) = percentiles(samples);
            println!(
                "| {label:<54} | {:>8.2} | {:>8.2} | {:>8.2} |",
                p50 * 1e3,
                p99 * 1e3,
                mean * 1e3
            );
        }
    }
}
