//! The project's one load generator: a steady request rate (or as fast as the concurrency
//! allows) over one or more models, sent either through the HTTP gateway (`--url`: the
//! chaos, soak, load and cost figures) or straight to a worker over mutual-TLS gRPC
//! (`--worker-addr`: the batching and GPU figures). A progress line per second, a summary,
//! and optionally one CSV line per request. Benchmarks drive it as a library ([`drive`]).

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use inferencehub_proto::ErrorKind;
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{FeatureRow, PredictBatchRequest};
use inferencehub_proto::settings::{WorkerClientTls, duration};
use tokio::sync::{Mutex, Semaphore};
use tonic::transport::Channel;

/// Flags of `load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The gateway's predict URL (`.local/dev.env`'s `IHUB_PREDICT_URL`).
    #[arg(long, env = "IHUB_PREDICT_URL")]
    pub url: Option<String>,
    /// Bearer token for `--url` (`IHUB_TOKEN`).
    #[arg(long, env = "IHUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A worker's gRPC URL (`https://127.0.0.1:50051`): the load goes there instead of
    /// to the gateway.
    #[arg(long)]
    pub worker_addr: Option<String>,
    /// Mutual-TLS material for `--worker-addr`.
    #[command(flatten)]
    pub tls: WorkerClientTls,
    /// Requests per second to start; 0 starts a new one whenever one finishes (closed loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Most requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to send (`10s`, `2m`).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Stop after this many requests, whichever comes first.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Per-request timeout (a timeout counts as status 0).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub timeout: Duration,
    /// Models to mix, comma-separated, one request each in turn.
    #[arg(long, value_delimiter = ',', default_value = "sentiment,iris,wine")]
    pub models: Vec<String>,
    /// Inputs for every model, one per line (a TSV's first column): text, or
    /// comma-separated features. Default: the demo models' own inputs.
    #[arg(long)]
    pub inputs: Option<PathBuf>,
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

/// One input, as a model takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A text model's prompt.
    Text(String),
    /// A tabular model's features.
    Features(Vec<f32>),
}

impl Input {
    /// A line of numbers is a feature row; anything else is a prompt.
    pub fn parse(line: &str) -> Self {
        let numbers: Result<Vec<f32>, _> = line.split(',').map(|x| x.trim().parse()).collect();
        match numbers {
            Ok(features) => Self::Features(features),
            Err(_) => Self::Text(line.to_string()),
        }
    }
}

/// The inputs of a demo model.
pub fn demo_inputs(model: &str) -> Vec<Input> {
    match model {
        "sentiment" => [
            "The support team fixed it in minutes, thank you!",
            "The update broke the login page again.",
            "Delivery was fine, nothing special.",
            "I love how fast the new version is.",
        ]
        .map(|p| Input::Text(p.into()))
        .to_vec(),
        "iris" => vec![Input::Features(vec![5.1, 3.5, 1.4, 0.2])],
        "wine" => vec![Input::Features(vec![
            13.32, 3.24, 2.38, 21.5, 92.0, 1.93, 0.76, 0.45, 1.25, 8.42, 0.55, 1.62, 650.0,
        ])],
        _ => vec![Input::Features(vec![0.0])],
    }
}

/// What one request came back with: an HTTP status (a gRPC code as the gateway would
/// answer it; 0 for a transport error or a timeout) and, from a worker, the size of the
/// batch that computed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// The status.
    pub status: u16,
    /// Inputs in the forward pass that computed it, when the answer says.
    pub batch: Option<u32>,
    /// The worker's forward pass that computed it, milliseconds, when the answer says.
    pub compute_ms: Option<f64>,
}

/// Where the load goes.
pub trait Target: Send + Sync + 'static {
    /// Sends `input` for `model`.
    fn send(&self, model: &str, input: &Input) -> impl Future<Output = Outcome> + Send;
}

/// The HTTP gateway's `POST /v1/predict`.
pub struct Http {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Http {
    /// A client for `url` with `token`.
    pub fn new(url: &str, token: &str, timeout: Duration, idle: usize) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .pool_max_idle_per_host(idle)
                .build()?,
            url: url.to_string(),
            token: token.to_string(),
        })
    }
}

impl Target for Http {
    async fn send(&self, model: &str, input: &Input) -> Outcome {
        let body = match input {
            Input::Text(p) => serde_json::json!({"model_name": model, "prompt": p}),
            Input::Features(f) => serde_json::json!({"model_name": model, "features": f}),
        };
        let sent = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        let status = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        };
        Outcome {
            status,
            batch: None,
            compute_ms: None,
        }
    }
}

/// A worker's `PredictBatch` over mutual TLS, one input per call (as the gateway sends),
/// round robin over one or more connections.
pub struct Grpc {
    channels: Vec<Channel>,
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
}

impl Grpc {
    /// Over established channels (at least one).
    pub fn new(channels: Vec<Channel>, timeout: Duration) -> Self {
        Self {
            channels,
            next: Default::default(),
            timeout,
        }
    }
}

impl Target for Grpc {
    async fn send(&self, model: &str, input: &Input) -> Outcome {
        let mut request = PredictBatchRequest {
            model_name: model.to_string(),
            ..Default::default()
        };
        match input {
            Input::Text(p) => request.prompts.push(p.clone()),
            Input::Features(f) => request.rows.push(FeatureRow {
                features: f.clone(),
            }),
        }
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.timeout);
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(channel) = self.channels.get(n % self.channels.len().max(1)) else {
            return Outcome {
                status: 0,
                batch: None,
                compute_ms: None,
            };
        };
        match ModelInferenceClient::new(channel.clone())
            .predict_batch(request)
            .await
        {
            Ok(answer) => {
                let first = answer.into_inner().results.into_iter().next();
                Outcome {
                    status: 200,
                    batch: first.as_ref().map(|r| r.batch_size),
                    compute_ms: first.map(|r| r.compute_ms),
                }
            }
            Err(status) => Outcome {
                status: ErrorKind::from_grpc(status.code()).http_status(),
                batch: None,
                compute_ms: None,
            },
        }
    }
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Models to mix, and the inputs each cycles through.
    pub models: Vec<(String, Vec<Input>)>,
    /// Requests per second; 0: closed loop.
    pub rate: f64,
    /// Most in flight.
    pub concurrency: usize,
    /// Longest run.
    pub duration: Duration,
    /// Most requests.
    pub requests: u64,
    /// Print a progress line every second.
    pub progress: bool,
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When it started, from the start of the run.
    pub start_ms: f64,
    /// How long it took.
    pub latency_ms: f64,
    /// What it came back with.
    pub outcome: Outcome,
    /// Which model of the plan.
    pub model: usize,
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
    /// Mean size of the batches that computed the answers (from a worker).
    pub mean_batch: Option<f64>,
    /// Median of each answer's wall time less its forward pass (from a worker): the
    /// transport, the hand-offs and the tokenizer, milliseconds.
    pub p50_overhead_ms: Option<f64>,
    /// The worker's forward passes (from a worker, when this load was its only traffic):
    /// how many, and the share of the run's wall time they took — each answer counts its
    /// pass's time over the pass's inputs.
    pub passes: Option<PassShare>,
}

/// How much of a run the worker's forward passes took.
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct PassShare {
    /// Passes (the sum over answers of one over their batch's size).
    pub count: f64,
    /// Their time over the run's wall time.
    pub share: f64,
    /// The mean time between the end of one pass and the start of the next, milliseconds:
    /// answering the callers and taking their next inputs.
    pub gap_ms: f64,
}

/// The summary of `records`, sent over `elapsed`.
pub fn summarize(records: &[Record], elapsed: Duration) -> Summary {
    let mut latencies: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut statuses = std::collections::BTreeMap::new();
    for r in records {
        *statuses.entry(r.outcome.status).or_insert(0) += 1;
    }
    let ok = records
        .iter()
        .filter(|r| (200..300).contains(&r.outcome.status))
        .count();
    let batches: Vec<u32> = records.iter().filter_map(|r| r.outcome.batch).collect();
    Summary {
        sent: records.len(),
        ok,
        failed: records.len() - ok,
        statuses,
        rps: records.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        mean_batch: (!batches.is_empty())
            .then(|| batches.iter().map(|&b| f64::from(b)).sum::<f64>() / batches.len() as f64),
        p50_overhead_ms: {
            let mut overhead: Vec<f64> = records
                .iter()
                .filter_map(|r| r.outcome.compute_ms.map(|c| r.latency_ms - c))
                .collect();
            overhead.sort_by(f64::total_cmp);
            (!overhead.is_empty()).then(|| quantile(&overhead, 0.50))
        },
        passes: pass_share(records, elapsed),
    }
}

/// [`Summary::passes`].
fn pass_share(records: &[Record], elapsed: Duration) -> Option<PassShare> {
    let (mut count, mut busy_ms) = (0f64, 0f64);
    for r in records {
        if let (Some(batch), Some(ms)) = (r.outcome.batch, r.outcome.compute_ms)
            && batch > 0
        {
            count += 1.0 / f64::from(batch);
            busy_ms += ms / f64::from(batch);
        }
    }
    let wall_ms = elapsed.as_secs_f64() * 1e3;
    (count > 0.0 && wall_ms > 0.0).then(|| PassShare {
        count,
        share: busy_ms / wall_ms,
        gap_ms: (wall_ms - busy_ms).max(0.0) / count,
    })
}

/// Which of its model's `inputs` request `request` of a plan over `models` models carries:
/// each model cycles through all its inputs with a prime stride that does not divide their
/// count, so that concurrent requests do not all carry the same one.
pub fn input_for(request: u64, models: usize, inputs: usize) -> usize {
    let inputs = inputs.max(1) as u64;
    let stride = [7, 11, 13, 17, 19, 23]
        .into_iter()
        .find(|&p| !inputs.is_multiple_of(p))
        .unwrap_or(1);
    ((request / models.max(1) as u64) * stride % inputs) as usize
}

/// Sends `plan`'s load to `target`; every request's record, in start order, and the run's
/// length.
pub async fn drive<T: Target>(target: Arc<T>, plan: &Plan) -> (Vec<Record>, Duration) {
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));
    let slots = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let started = Instant::now();
    let until = started + plan.duration;
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let progress = plan.progress.then(|| {
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
    let plan = Arc::new(plan.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while Instant::now() < until && i < plan.requests && !plan.models.is_empty() {
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let model = (i % plan.models.len() as u64) as usize;
        let (target, records, plan) = (target.clone(), records.clone(), plan.clone());
        tasks.spawn(async move {
            let (name, inputs) = &plan.models[model];
            let input = &inputs[input_for(i, plan.models.len(), inputs.len())];
            let start = Instant::now();
            let outcome = target.send(name, input).await;
            let record = Record {
                start_ms: start.duration_since(started).as_secs_f64() * 1e3,
                latency_ms: start.elapsed().as_secs_f64() * 1e3,
                outcome,
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
    (records, elapsed)
}

/// `load`: runs the load and prints the summary.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!args.models.is_empty(), "--models names no model");
    let from_file = match &args.inputs {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            let inputs: Vec<Input> = text
                .lines()
                .filter_map(|l| l.split('\t').next())
                .filter(|l| !l.trim().is_empty())
                .map(Input::parse)
                .collect();
            anyhow::ensure!(!inputs.is_empty(), "no inputs in {}", path.display());
            Some(inputs)
        }
        None => None,
    };
    let plan = Plan {
        models: args
            .models
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    from_file.clone().unwrap_or_else(|| demo_inputs(m)),
                )
            })
            .collect(),
        rate: args.rate,
        concurrency: args.concurrency,
        duration: args.duration,
        requests: args.requests.unwrap_or(u64::MAX),
        progress: !args.quiet,
    };
    let timeout = args.timeout;
    let (records, elapsed) = match (&args.worker_addr, &args.url) {
        (Some(addr), _) => {
            let channel = connect(addr, &args.tls, timeout).await?;
            drive(Arc::new(Grpc::new(vec![channel], timeout)), &plan).await
        }
        (None, Some(url)) => {
            let token = args
                .token
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--url needs --token (or IHUB_TOKEN)"))?;
            let http = Http::new(url, token, timeout, args.concurrency)?;
            drive(Arc::new(http), &plan).await
        }
        (None, None) => anyhow::bail!("give --url (the gateway) or --worker-addr (a worker)"),
    };
    if let Some(path) = &args.csv {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "start_ms,latency_ms,status,model")?;
        for r in &records {
            writeln!(
                out,
                "{:.1},{:.2},{},{}",
                r.start_ms, r.latency_ms, r.outcome.status, args.models[r.model]
            )?;
        }
    }
    let summary = summarize(&records, elapsed);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "| requests | ok | failed | req/s | p50 ms | p99 ms | max ms | mean batch | p50 wall - forward ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} |",
            summary.sent,
            summary.ok,
            summary.failed,
            summary.rps,
            summary.p50_ms,
            summary.p99_ms,
            summary.max_ms,
            summary
                .mean_batch
                .map_or("-".to_string(), |b| format!("{b:.1}")),
            summary
                .p50_overhead_ms
                .map_or("-".to_string(), |o| format!("{o:.3}"))
        );
        if summary.failed > 0 {
            println!("statuses: {:?}", summary.statuses);
        }
    }
    Ok(())
}

/// A mutual-TLS channel to the worker at `addr`.
pub async fn connect(
    addr: &str,
    tls: &WorkerClientTls,
    timeout: Duration,
) -> anyhow::Result<Channel> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pems = tls.read().map_err(anyhow::Error::msg)?;
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pems.ca))
        .identity(tonic::transport::Identity::from_pem(pems.cert, pems.key))
        .domain_name(tls.server_name.clone());
    Ok(tonic::transport::Endpoint::from_shared(addr.to_string())?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .tls_config(config)?
        .connect()
        .await?)
}

/// `requests` calls for `model`, `callers` at a time, as fast as they are answered (a
/// closed loop), cycling through `inputs`: the benchmarks' load.
pub async fn closed_loop<T: Target>(
    target: Arc<T>,
    model: &str,
    inputs: Vec<Input>,
    callers: usize,
    requests: u64,
) -> Summary {
    let plan = Plan {
        models: vec![(model.to_string(), inputs)],
        rate: 0.0,
        concurrency: callers,
        duration: Duration::from_secs(24 * 3600),
        requests,
        progress: false,
    };
    let (records, elapsed) = drive(target, &plan).await;
    summarize(&records, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(latency_ms: f64, status: u16, batch: Option<u32>) -> Record {
        Record {
            start_ms: 0.0,
            latency_ms,
            outcome: Outcome {
                status,
                batch,
                compute_ms: None,
            },
            model: 0,
        }
    }

    /// An answer from a worker: its wall time, its forward pass and that pass's batch size.
    fn forwarded(wall_ms: f64, forward_ms: f64, batch: u32) -> Record {
        let mut r = record(wall_ms, 200, Some(batch));
        r.outcome.compute_ms = Some(forward_ms);
        r
    }

    #[test]
    fn the_summary_counts_failures_and_orders_latencies() {
        let records: Vec<Record> = (1..=100)
            .map(|i| record(i as f64, if i % 10 == 0 { 503 } else { 200 }, None))
            .chain([record(1000.0, 0, None)])
            .collect();
        let s = summarize(&records, Duration::from_secs(1));
        assert_eq!((s.sent, s.ok, s.failed), (101, 90, 11));
        assert_eq!(s.statuses[&503], 10);
        assert_eq!(s.statuses[&0], 1);
        assert_eq!(s.max_ms, 1000.0);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 100.0);
        assert_eq!(s.mean_batch, None);
        let batched = [record(1.0, 200, Some(4)), record(1.0, 200, Some(2))];
        assert_eq!(
            summarize(&batched, Duration::from_secs(1)).mean_batch,
            Some(3.0)
        );
        assert_eq!(s.p50_overhead_ms, None);
        // What a call costs beyond the worker's forward pass: wall less forward, median.
        let timed: Vec<Record> = [(5.0, 4.5), (3.0, 2.0), (9.0, 8.75)]
            .into_iter()
            .map(|(wall, forward)| forwarded(wall, forward, 1))
            .collect();
        assert_eq!(
            summarize(&timed, Duration::from_secs(1)).p50_overhead_ms,
            Some(0.5)
        );
        assert_eq!(s.passes, None);
        // Two passes of two inputs, 300 and 100 ms, in one second: 40 % busy, 300 ms
        // between passes on average.
        let passes: Vec<Record> = [(300.0, 2), (300.0, 2), (100.0, 2), (100.0, 2)]
            .into_iter()
            .map(|(forward, batch)| forwarded(forward, forward, batch))
            .collect();
        assert_eq!(
            summarize(&passes, Duration::from_secs(1)).passes,
            Some(PassShare {
                count: 2.0,
                share: 0.4,
                gap_ms: 300.0
            })
        );
    }

    #[test]
    fn a_model_cycles_through_every_input() {
        // 364 = 7 x 52: a stride of 7 would reach 52 of them.
        for inputs in [1usize, 5, 7, 10, 364, 1001] {
            let seen: std::collections::BTreeSet<usize> = (0..inputs as u64)
                .map(|i| input_for(i * 2 + 1, 2, inputs))
                .collect();
            assert_eq!(seen.len(), inputs, "{inputs} inputs");
        }
        // Consecutive requests of one model carry different inputs.
        assert_ne!(input_for(0, 1, 364), input_for(1, 1, 364));
    }

    #[test]
    fn input_lines_are_features_or_prompts() {
        assert_eq!(Input::parse("1, 2.5"), Input::Features(vec![1.0, 2.5]));
        assert_eq!(
            Input::parse("great, thanks"),
            Input::Text("great, thanks".into())
        );
    }

    /// A target that answers at once, counting what it was sent.
    struct Counting(std::sync::Mutex<Vec<String>>);

    impl Target for Counting {
        async fn send(&self, model: &str, _: &Input) -> Outcome {
            self.0.lock().unwrap().push(model.to_string());
            Outcome {
                status: if model == "b" { 503 } else { 200 },
                batch: Some(1),
                compute_ms: None,
            }
        }
    }

    #[tokio::test]
    async fn the_driver_mixes_models_and_stops_at_the_request_count() {
        let target = Arc::new(Counting(std::sync::Mutex::default()));
        let plan = Plan {
            models: vec![
                ("a".into(), demo_inputs("iris")),
                ("b".into(), demo_inputs("sentiment")),
            ],
            rate: 0.0,
            concurrency: 4,
            duration: Duration::from_secs(30),
            requests: 10,
            progress: false,
        };
        let (records, _) = drive(target.clone(), &plan).await;
        assert_eq!(records.len(), 10);
        let sent = target.0.lock().unwrap().clone();
        assert_eq!(sent.iter().filter(|m| *m == "b").count(), 5);
        let s = summarize(&records, Duration::from_secs(1));
        assert_eq!((s.ok, s.failed), (5, 5));
    }
}
