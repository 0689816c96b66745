//! `inferencehub-dev load`: a small HTTP load driver for the local stack (the chaos, soak
//! and load figures): a steady request rate (or as fast as `--concurrency` allows) mixed
//! over the demo models, a progress line per second, a summary, and optionally one CSV
//! line per request for later analysis.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{Mutex, Semaphore};

/// Flags of `load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The predict URL (`.local/dev.env`'s `IHUB_PREDICT_URL`).
    #[arg(long, env = "IHUB_PREDICT_URL")]
    pub url: String,
    /// Bearer token (`IHUB_TOKEN`).
    #[arg(long, env = "IHUB_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Requests per second to start; 0 starts a new one whenever one finishes (closed loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Most requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests, whichever comes first.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Per-request timeout, in milliseconds (a timeout counts as status 0).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Models to mix, comma-separated (the demo models by default).
    #[arg(long, value_delimiter = ',', default_value = "sentiment,iris,wine")]
    pub models: Vec<String>,
    /// Write `start_ms,latency_ms,status,model` per request here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

fn body(model: &str, i: u64) -> String {
    match model {
        "sentiment" => {
            const PROMPTS: [&str; 4] = [
                "The support team fixed it in minutes, thank you!",
                "The update broke the login page again.",
                "Delivery was fine, nothing special.",
                "I love how fast the new version is.",
            ];
            serde_json::json!({"model_name": model, "prompt": PROMPTS[(i % 4) as usize]})
        }
        "iris" => serde_json::json!({"model_name": model, "features": [5.1, 3.5, 1.4, 0.2]}),
        "wine" => serde_json::json!({"model_name": model,
            "features": [13.32, 3.24, 2.38, 21.5, 92, 1.93, 0.76, 0.45, 1.25, 8.42, 0.55, 1.62, 650]}),
        other => serde_json::json!({"model_name": other, "features": [0.0]}),
    }
    .to_string()
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
struct Record {
    start_ms: f64,
    latency_ms: f64,
    /// HTTP status, 0 for a transport error or timeout.
    status: u16,
    model: usize,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The summary of a run.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// Requests sent.
    pub sent: usize,
    /// 2xx answers.
    pub ok: usize,
    /// Everything else.
    pub failed: usize,
    /// Count per status (0 = transport error or timeout).
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// Requests per second over the run.
    pub rps: f64,
    /// Latency quantiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn summarize(records: &[Record], elapsed: Duration) -> Summary {
    let mut latencies: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut statuses = std::collections::BTreeMap::new();
    for r in records {
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let ok = records
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .count();
    Summary {
        sent: records.len(),
        ok,
        failed: records.len() - ok,
        statuses,
        rps: records.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
}

/// Runs the load and prints the summary.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    inferencehub_functions::install_crypto_provider();
    anyhow::ensure!(!args.models.is_empty(), "--models names no model");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let limit = args.requests.unwrap_or(u64::MAX);
    let progress = (!args.quiet).then(|| {
        let records = records.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = records.lock().await.clone();
                let s = summarize(&done, started.elapsed());
                eprintln!(
                    "t={:>4.0}s sent={} ok={} failed={} p50={:.1}ms p99={:.1}ms",
                    started.elapsed().as_secs_f64(),
                    s.sent,
                    s.ok,
                    s.failed,
                    s.p50_ms,
                    s.p99_ms
                );
            }
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while Instant::now() < until && i < limit {
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let model = (i % args.models.len() as u64) as usize;
        let request = client
            .post(&args.url)
            .bearer_auth(&args.token)
            .header("content-type", "application/json")
            .body(body(&args.models[model], i));
        let records = records.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let status = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            let record = Record {
                start_ms: start.duration_since(started).as_secs_f64() * 1e3,
                latency_ms: start.elapsed().as_secs_f64() * 1e3,
                status,
                model,
            };
            records.lock().await.push(record);
            drop(permit);
        });
        i += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut records = records.lock().await.clone();
    records.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    if let Some(path) = &args.csv {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "start_ms,latency_ms,status,model")?;
        for r in &records {
            writeln!(
                out,
                "{:.1},{:.2},{},{}",
                r.start_ms, r.latency_ms, r.status, args.models[r.model]
            )?;
        }
    }
    let summary = summarize(&records, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("| requests | ok | failed | req/s | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            summary.sent,
            summary.ok,
            summary.failed,
            summary.rps,
            summary.p50_ms,
            summary.p99_ms,
            summary.max_ms
        );
        if summary.failed > 0 {
            println!("statuses: {:?}", summary.statuses);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_failures_and_orders_latencies() {
        let r = |latency_ms, status| Record {
            start_ms: 0.0,
            latency_ms,
            status,
            model: 0,
        };
        let records: Vec<Record> = (1..=100)
            .map(|i| r(i as f64, if i % 10 == 0 { 503 } else { 200 }))
            .chain([r(1000.0, 0)])
            .collect();
        let s = summarize(&records, Duration::from_secs(1));
        assert_eq!((s.sent, s.ok, s.failed), (101, 90, 11));
        assert_eq!(s.statuses[&503], 10);
        assert_eq!(s.statuses[&0], 1);
        assert_eq!(s.max_ms, 1000.0);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 100.0);
    }
}
