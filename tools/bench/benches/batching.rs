//! `make bench-batching`: predictions/s and latency percentiles for the `sentiment` model at
//! 1 and 32 concurrent callers (the project's load generator, one input per `PredictBatch`
//! call as the gateway sends), over real mutual-TLS gRPC on loopback, with batching on and
//! (for comparison) off. Release build; needs `make models`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use inferencehub_bench::load::{Grpc, Input, Summary, closed_loop};
use inferencehub_devkit::certs::{self, CertPaths};
use inferencehub_proto::settings::WorkerClientTls;
use inferencehub_worker::config::ServeArgs;
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
    let device = std::env::var("IHUB_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let flags: Vec<std::ffi::OsString> = [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--device",
        &device,
        "--max-batch-size",
        &max_batch_size.to_string(),
        "--max-wait",
        &format!("{max_wait_ms}ms"),
        "--max-waiting",
        "4096",
        "--max-prompt-bytes",
        "65536",
        "--drain-timeout",
        "5s",
    ]
    .iter()
    .map(|s| s.into())
    .chain(
        [
            ("--model-dir", models),
            ("--tls-cert", &certs.server_cert),
            ("--tls-key", &certs.server_key),
            ("--tls-client-ca", &certs.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.into(), path.as_os_str().to_owned()]),
    )
    .collect();
    ServeArgs::from_flags(flags).unwrap()
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
    summary: Summary,
}

async fn run(target: &Arc<Grpc>, callers: usize, requests: usize) -> Summary {
    let inputs = PROMPTS.iter().map(|p| Input::Text(p.to_string())).collect();
    closed_loop(
        target.clone(),
        "sentiment",
        inputs,
        callers,
        requests as u64,
    )
    .await
}

#[tokio::main]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
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
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(channel(worker.grpc_addr, &certs).await);
        }
        let target = Arc::new(Grpc::new(channels, Duration::from_secs(60)));
        // Warm up connections and caches.
        run(&target, 4, 40).await;
        let plan: &[(usize, usize)] = if max_batch == 1 {
            &[(32, 20 * scale)]
        } else {
            &[(1, 200 * scale), (32, 20 * scale)]
        };
        for &(callers, per_caller) in plan {
            let summary = run(&target, callers, callers * per_caller).await;
            assert_eq!(summary.failed, 0, "{:?}", summary.statuses);
            rows.push(Row {
                label: format!("{callers:>2} caller(s), {label_suffix}"),
                summary,
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
        let s = &r.summary;
        println!(
            "| {:<38} | {:>8} | {:>13.1} | {:>8.2} | {:>8.2} | {:>10.1} |",
            r.label,
            s.sent,
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.mean_batch.unwrap_or(0.0)
        );
    }
}
