//! Worker benchmark: predictions/s and latency percentiles for the `sentiment` model at 1
//! and 32 concurrent callers, over real mutual-TLS gRPC on loopback, with batching on and
//! (for comparison) off. Run with `make bench-worker` (release build; needs `make models`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use inferencehub_devkit::certs::{self, CertPaths};
use inferencehub_proto::pb::PredictRequest;
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::settings::WorkerClientTls;
use inferencehub_worker::config::{LogFormat, ServeArgs};
use inferencehub_worker::server;
use tonic::transport::Channel;

const PROMPTS: &[&str] = &[
    "I absolutely love this product, it works perfectly.",
    "The delivery was late and the box was damaged.",
    "Thanks for the quick fix!",
    "The hotel was clean, the staff were friendly and breakfast was great, but the room was a little small.",
    "Worst customer service I have ever dealt with.",
    "ok",
    "My order arrived on time and everything was intact.",
    "The update broke the login page again, please fix it as soon as possible.",
];

fn args(models: &Path, certs: &CertPaths, max_batch_size: u32, max_wait_ms: u64) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_dir: models.to_path_buf(),
        tls_cert: certs.server_cert.clone(),
        tls_key: certs.server_key.clone(),
        tls_client_ca: certs.ca.clone(),
        tls_client_names: Vec::new(),
        tls_health_names: Vec::new(),
        tls_handshake_timeout_ms: 5_000,
        max_connections: 1_024,
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        device: std::env::var("IHUB_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()),
        dtype: None,
        max_batch_size,
        max_wait_ms,
        max_waiting: 4096,
        max_prompt_bytes: 65_536,
        drain_timeout_secs: 5,
        emf_interval_secs: 0,
        log_format: LogFormat::Text,
    }
}

async fn channel(addr: SocketAddr, certs: &CertPaths) -> Channel {
    inferencehub_worker::client::connect(
        &format!("https://{addr}"),
        &WorkerClientTls::from_files(&certs.ca, &certs.client_cert, &certs.client_key),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

struct Row {
    label: String,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    mean_batch: f64,
}

async fn run(
    channels: &[Channel],
    callers: usize,
    per_caller: usize,
) -> (Duration, Vec<Duration>, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let mut client = ModelInferenceClient::new(channels[c % channels.len()].clone());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let req = PredictRequest {
                        model_name: "sentiment".into(),
                        prompt: PROMPTS[(c + i) % PROMPTS.len()].into(),
                        ..Default::default()
                    };
                    let t = Instant::now();
                    let r = client.predict(req).await.expect("prediction").into_inner();
                    out.push((t.elapsed(), r.batch_size));
                }
                out
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut batch_sum = 0u64;
    for task in tasks {
        for (latency, batch) in task.await.unwrap() {
            latencies.push(latency);
            batch_sum += batch as u64;
        }
    }
    let mean_batch = batch_sum as f64 / latencies.len() as f64;
    (started.elapsed(), latencies, mean_batch)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let models = root.join("models");
    assert!(models.join("sentiment").is_dir(), "run `make models` first");
    // Only the sentiment model is measured.
    let only = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        models.join("sentiment").canonicalize().unwrap(),
        only.path().join("sentiment"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::generate(dir.path()).unwrap();
    let scale: usize = std::env::var("IHUB_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);

    let mut rows = Vec::new();
    let configs: [(u32, u64, &str); 3] = [
        (32, 5, "batch <= 32, wait 5 ms"),
        (32, 0, "batch <= 32, wait 0 ms"),
        (1, 0, "no batching"),
    ];
    for (max_batch, max_wait, label_suffix) in configs {
        let mut worker = server::start(args(only.path(), &certs, max_batch, max_wait))
            .await
            .unwrap();
        worker.ready().await.unwrap();
        let channels =
            futures::future::join_all((0..4).map(|_| channel(worker.grpc_addr, &certs))).await;
        // Warm up connections and caches.
        run(&channels, 4, 10).await;
        let plan: &[(usize, usize)] = if max_batch == 1 {
            &[(32, 20 * scale)]
        } else {
            &[(1, 200 * scale), (32, 20 * scale)]
        };
        for &(callers, per_caller) in plan {
            let (elapsed, mut latencies, mean_batch) = run(&channels, callers, per_caller).await;
            latencies.sort();
            rows.push(Row {
                label: format!("{callers:>2} caller(s), {label_suffix}"),
                requests: latencies.len(),
                elapsed,
                latencies,
                mean_batch,
            });
        }
        worker.stop().await.unwrap();
    }

    println!();
    println!(
        "sentiment (all-MiniLM-L6-v2 + head), mutual-TLS gRPC on loopback, {} CPU threads",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "| {:<38} | {:>8} | {:>13} | {:>8} | {:>8} | {:>10} |",
        "load", "requests", "predictions/s", "p50 ms", "p99 ms", "mean batch"
    );
    println!(
        "|{:-<40}|{:->10}|{:->15}|{:->10}|{:->10}|{:->12}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<38} | {:>8} | {:>13.1} | {:>8.2} | {:>8.2} | {:>10.1} |",
            r.label,
            r.requests,
            r.requests as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.latencies, 0.50),
            percentile(&r.latencies, 0.99),
            r.mean_batch
        );
    }
}
