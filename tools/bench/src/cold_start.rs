//! `inferencehub-bench cold-start`: how long a Lambda function binary takes from its start
//! to being ready (its first `GET /next`) and to its first answer, at the CPU share Lambda
//! gives each memory size.
//!
//! Lambda gives a function CPU in proportion to its memory: one full vCPU at 1,769 MB, so
//! 256 MB is ≈ 0.145 of a core. Here each memory size is a cgroup (v1) CPU quota of that
//! share, and the function is started inside it, once per cold start, against a minimal
//! Lambda Runtime API served by this tool on loopback: the first event waits at `/next` as
//! it does on a cold start, further (warm) invocations follow one at a time. Reported per
//! cold start: milliseconds to ready, to the first answer, the function's CPU time up to
//! that answer, and the median warm invocation (event handed out to answer back).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use clap::Args;
use inferencehub_devkit::tls_front::TlsFront;
use inferencehub_proto::settings::duration;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Memory at which Lambda gives a function one full vCPU.
const MB_PER_CORE: f64 = 1769.0;
const API: &str = "/2018-06-01/runtime";

/// Flags of `cold-start`.
#[derive(Debug, Clone, Args)]
pub struct ColdStartArgs {
    /// The function binary (a release build), started once per cold start with this
    /// process's environment.
    #[arg(long)]
    pub binary: PathBuf,
    /// The API Gateway event every invocation carries (JSON).
    #[arg(long)]
    pub event: PathBuf,
    /// Memory sizes to measure, MB; each runs at its CPU share (MB / 1,769 of a core).
    #[arg(long, value_delimiter = ',', default_value = "1769,1024,512,256,128")]
    pub memory: Vec<u32>,
    /// The cgroup CPU period the quota is counted in (the share is quota / period).
    #[arg(long, default_value = "10ms", value_parser = duration)]
    pub period: Duration,
    /// Cold starts per memory size.
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
    /// Warm invocations after each cold start's first answer.
    #[arg(long, default_value_t = 20)]
    pub warm: usize,
    /// Longest wait for any one step (ready, an answer).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub timeout: Duration,
    /// The function's stdout and stderr go here (appended).
    #[arg(long, default_value = "cold-start.log")]
    pub log: PathBuf,
    /// Price file (`infra/prices.json`): with it the table shows what each memory size
    /// costs per cold start and per million warm invocations (Lambda arm64 GB-seconds,
    /// billed per started millisecond, plus the request price).
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Also write the per-memory summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// DynamoDB over TLS, as on AWS: a rustls front on loopback presenting CERT with KEY
    /// (PEM, valid for `localhost`) forwards to `AWS_ENDPOINT_URL_DYNAMODB` (plain HTTP, a
    /// local server), and the function is pointed at the front, trusting CA through
    /// `AWS_CA_BUNDLE`: its first answer then includes the TLS handshake with DynamoDB.
    #[arg(long, num_args = 3, value_names = ["CA", "CERT", "KEY"])]
    pub dynamodb_tls: Option<Vec<PathBuf>>,
    /// Environment the function gets on top of this process's (set by [`run`]).
    #[arg(skip)]
    pub env: Vec<(String, String)>,
}

/// One cold start's figures, milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ColdStart {
    /// Start of the process to its first `GET /next`.
    pub ready_ms: f64,
    /// Start of the process to its first answer.
    pub first_answer_ms: f64,
    /// CPU time of the function up to its first answer (all its threads).
    pub cpu_ms: f64,
    /// Median warm invocation: event handed out to answer received.
    pub warm_ms: f64,
}

/// One memory size's summary: medians over its cold starts, and the range.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Memory, MB.
    pub memory_mb: u32,
    /// The CPU share it runs at, cores.
    pub share: f64,
    /// Whether a quota was applied (false: the full machine).
    pub quota: bool,
    /// [`ColdStart::ready_ms`]: median, min, max.
    pub ready_ms: [f64; 3],
    /// [`ColdStart::first_answer_ms`]: median, min, max.
    pub first_answer_ms: [f64; 3],
    /// [`ColdStart::cpu_ms`]: median, min, max.
    pub cpu_ms: [f64; 3],
    /// [`ColdStart::warm_ms`]: median, min, max.
    pub warm_ms: [f64; 3],
    /// USD billed for one cold start's first invocation (init and invoke), at the median.
    pub usd_per_cold_start: Option<f64>,
    /// USD billed per million warm invocations, at the median.
    pub usd_per_million_warm: Option<f64>,
}

/// Lambda's prices: per GB-second (arm64) and per request.
#[derive(Debug, Clone, Copy)]
struct Prices {
    gb_second: f64,
    request: f64,
}

impl Prices {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: serde_json::Value = serde_json::from_str(&text)?;
        let price = |name: &str| {
            file["prices"][name]["price"]
                .as_f64()
                .with_context(|| format!("{} has no prices.{name}.price", path.display()))
        };
        Ok(Self {
            gb_second: price("lambda_arm64_gb_second")?,
            request: price("lambda_request")?,
        })
    }

    /// What one invocation of `ms` costs at `memory_mb`: whole milliseconds, as billed.
    fn invocation(&self, memory_mb: u32, ms: f64) -> f64 {
        ms.ceil() / 1e3 * f64::from(memory_mb) / 1024.0 * self.gb_second + self.request
    }
}

/// Runs the measurement and prints the table.
pub async fn run(mut args: ColdStartArgs) -> anyhow::Result<()> {
    let event = std::fs::read(&args.event)
        .with_context(|| format!("reading the event {}", args.event.display()))?;
    serde_json::from_slice::<serde_json::Value>(&event)
        .with_context(|| format!("{} is not JSON", args.event.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cgroups = Cgroups::find();
    if let Err(why) = &cgroups {
        eprintln!("no CPU quota ({why:#}): every row runs on the whole machine");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    let prices = args.prices.as_deref().map(Prices::read).transpose()?;
    let _front = match args.dynamodb_tls.clone().as_deref() {
        Some([ca, cert, key]) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").context(
                "--dynamodb-tls forwards to AWS_ENDPOINT_URL_DYNAMODB, which is not set",
            )?;
            let upstream = endpoint
                .strip_prefix("http://")
                .with_context(|| format!("AWS_ENDPOINT_URL_DYNAMODB {endpoint} is not http://"))?
                .trim_end_matches('/')
                .to_string();
            let front = TlsFront::start(cert, key, upstream).await?;
            let url = format!("https://localhost:{}", front.port);
            eprintln!("DynamoDB over TLS: {url} in front of {endpoint}");
            args.env.push(("AWS_ENDPOINT_URL_DYNAMODB".into(), url));
            args.env
                .push(("AWS_CA_BUNDLE".into(), ca.display().to_string()));
            Some(front)
        }
        Some(_) => anyhow::bail!("--dynamodb-tls takes CA CERT KEY"),
        None => None,
    };
    let terminal = std::io::stderr().is_terminal();
    let mut summaries = Vec::new();
    for &mb in &args.memory {
        let share = (f64::from(mb) / MB_PER_CORE).min(cores);
        let quota = match &cgroups {
            Ok(c) if share < cores => Some(c.create(mb, share, args.period)?),
            _ => None,
        };
        let applied = quota.is_some();
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let progress = format!(
                "{mb} MB ({share:.3} core{}): cold start {} of {}",
                if applied { "" } else { ", no quota" },
                i + 1,
                args.runs
            );
            // One line rewritten on a terminal; a line each where stderr is a file (a log
            // holds no carriage returns).
            if terminal {
                eprint!("\r{progress}");
            } else {
                eprintln!("{progress}");
            }
            let run = cold_start(&args, &event, mb, quota.as_ref(), &log).await?;
            runs.push(run);
        }
        if terminal {
            eprintln!();
        }
        drop(quota);
        let mut summary = summarise(mb, share, applied, &runs);
        if let Some(p) = prices {
            summary.usd_per_cold_start = Some(p.invocation(mb, summary.first_answer_ms[0]));
            summary.usd_per_million_warm = Some(1e6 * p.invocation(mb, summary.warm_ms[0]));
        }
        summaries.push(summary);
    }
    print_table(&summaries, args.period);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summaries)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn summarise(memory_mb: u32, share: f64, quota: bool, runs: &[ColdStart]) -> Summary {
    let stat = |f: fn(&ColdStart) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        [
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
        ]
    };
    Summary {
        memory_mb,
        share,
        quota,
        ready_ms: stat(|r| r.ready_ms),
        first_answer_ms: stat(|r| r.first_answer_ms),
        cpu_ms: stat(|r| r.cpu_ms),
        warm_ms: stat(|r| r.warm_ms),
        usd_per_cold_start: None,
        usd_per_million_warm: None,
    }
}

fn print_table(rows: &[Summary], period: Duration) {
    let cell = |s: [f64; 3]| format!("{:.1} ({:.1}–{:.1})", s[0], s[1], s[2]);
    let priced = rows.iter().any(|r| r.usd_per_cold_start.is_some());
    println!(
        "\nmedian (min–max) ms; CPU share = memory / 1,769 MB as a cgroup quota per {} ms period",
        period.as_millis()
    );
    print!("| memory | CPU share | ready | first answer | CPU to first answer | warm invocation |");
    println!(
        "{}",
        if priced {
            " $ per 1,000 cold starts | $ per million warm |"
        } else {
            ""
        }
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|{}",
        if priced { "---:|---:|" } else { "" }
    );
    for r in rows {
        print!(
            "| {} MB | {} | {} | {} | {} | {} |",
            r.memory_mb,
            if r.quota {
                format!("{:.3} core", r.share)
            } else {
                "whole machine".into()
            },
            cell(r.ready_ms),
            cell(r.first_answer_ms),
            cell(r.cpu_ms),
            cell(r.warm_ms),
        );
        match (r.usd_per_cold_start, r.usd_per_million_warm) {
            (Some(cold), Some(warm)) => println!(" {:.4} | {:.2} |", cold * 1e3, warm),
            _ => println!(),
        }
    }
}

/// A stream of invocations for one function process, and what it sends back.
struct Runtime {
    events: Mutex<mpsc::Receiver<(String, Bytes)>>,
    ready: Mutex<Option<oneshot::Sender<Instant>>>,
    answers: mpsc::Sender<(String, Result<Bytes, String>, Instant)>,
}

async fn next(State(rt): State<Arc<Runtime>>) -> (StatusCode, HeaderMap, Bytes) {
    if let Some(ready) = rt.ready.lock().await.take() {
        let _ = ready.send(Instant::now());
    }
    let Some((id, body)) = rt.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), Bytes::new());
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        + 30_000;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("content-type", "application/json".into());
    set("lambda-runtime-aws-request-id", id);
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:cold-start".into(),
    );
    (StatusCode::OK, headers, body)
}

async fn response(
    State(rt): State<Arc<Runtime>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let _ = rt.answers.send((id, Ok(body), Instant::now())).await;
    StatusCode::ACCEPTED
}

async fn error(
    State(rt): State<Arc<Runtime>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    let _ = rt.answers.send((id, Err(text), Instant::now())).await;
    StatusCode::ACCEPTED
}

async fn init_error(State(rt): State<Arc<Runtime>>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body).into_owned();
    let _ = rt
        .answers
        .send(("init".into(), Err(text), Instant::now()))
        .await;
    StatusCode::ACCEPTED
}

/// One cold start: a runtime API on a fresh port, the function started (inside `quota`),
/// the first event, `args.warm` more, then the process killed.
async fn cold_start(
    args: &ColdStartArgs,
    event: &[u8],
    memory_mb: u32,
    quota: Option<&Quota>,
    log: &std::fs::File,
) -> anyhow::Result<ColdStart> {
    let (events_tx, events_rx) = mpsc::channel(1);
    let (answers_tx, mut answers_rx) = mpsc::channel(4);
    let (ready_tx, ready_rx) = oneshot::channel();
    let rt = Arc::new(Runtime {
        events: Mutex::new(events_rx),
        ready: Mutex::new(Some(ready_tx)),
        answers: answers_tx,
    });
    let app = Router::new()
        .route(&format!("{API}/invocation/next"), get(next))
        .route(&format!("{API}/invocation/{{id}}/response"), post(response))
        .route(&format!("{API}/invocation/{{id}}/error"), post(error))
        .route(&format!("{API}/init/error"), post(init_error))
        .with_state(rt);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let mut child = spawn(args, addr, memory_mb, quota, log)?;
    let pid = child.id();
    let outcome = async {
        let ready = alive(&mut child, args.timeout, ready_rx)
            .await
            .context("waiting for the function to be ready")?
            .context("the runtime API stopped")?;
        let mut invoke = async |n: usize| -> anyhow::Result<(Instant, Instant)> {
            let id = format!("cold-start-{n}");
            let sent = Instant::now();
            events_tx
                .send((id.clone(), Bytes::copy_from_slice(event)))
                .await?;
            let (got, answer, at) = alive(&mut child, args.timeout, answers_rx.recv())
                .await
                .with_context(|| format!("waiting for the answer to invocation {n}"))?
                .context("the runtime API stopped")?;
            let body = answer.map_err(|e| anyhow::anyhow!("invocation {got} failed: {e}"))?;
            check_answer(&body).with_context(|| format!("invocation {n}"))?;
            Ok((sent, at))
        };
        let (_, first) = invoke(0).await?;
        let cpu_ms = cpu_time_ms(pid);
        let mut warm = Vec::with_capacity(args.warm);
        for n in 1..=args.warm {
            let (sent, at) = invoke(n).await?;
            warm.push(at.duration_since(sent).as_secs_f64() * 1e3);
        }
        warm.sort_by(f64::total_cmp);
        anyhow::Ok(ColdStart {
            ready_ms: ready.duration_since(started).as_secs_f64() * 1e3,
            first_answer_ms: first.duration_since(started).as_secs_f64() * 1e3,
            cpu_ms: cpu_ms?,
            warm_ms: warm.get(warm.len() / 2).copied().unwrap_or(f64::NAN),
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    outcome.with_context(|| {
        format!(
            "cold start of {} (its log: {})",
            args.binary.display(),
            args.log.display()
        )
    })
}

/// `what`'s outcome, unless `child` exits or `timeout` passes first.
async fn alive<T>(
    child: &mut Child,
    timeout: Duration,
    what: impl Future<Output = T>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(what, deadline);
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            out = &mut what => return Ok(out),
            () = &mut deadline => anyhow::bail!("nothing in {timeout:?}"),
            _ = poll.tick() => {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("the function exited ({status})");
                }
            }
        }
    }
}

/// An API Gateway proxy answer with a 2xx status, else the answer as the error.
fn check_answer(body: &[u8]) -> anyhow::Result<()> {
    let answer: serde_json::Value = serde_json::from_slice(body).context("answer not JSON")?;
    let status = answer["statusCode"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        (200..300).contains(&status),
        "answered {status}: {}",
        String::from_utf8_lossy(body)
    );
    Ok(())
}

/// Starts the function with the runtime API's address, from a thread that first joins
/// `quota`'s cgroup, so the process is inside it from its first instruction.
fn spawn(
    args: &ColdStartArgs,
    addr: std::net::SocketAddr,
    memory_mb: u32,
    quota: Option<&Quota>,
    log: &std::fs::File,
) -> anyhow::Result<Child> {
    let mut cmd = std::process::Command::new(&args.binary);
    let env = [
        ("AWS_LAMBDA_RUNTIME_API", addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "cold-start".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/cold-start".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "cold-start".into()),
    ];
    cmd.envs(env)
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    let tasks = quota.map(|q| q.tasks.clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(tasks) = &tasks {
                join_cgroup(tasks)?;
            }
            cmd.spawn()
                .with_context(|| format!("starting {}", args.binary.display()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the spawning thread panicked"))?
    })
}

/// Moves the calling thread (only it: cgroup v1 places threads) into the cgroup whose
/// `tasks` file is `tasks`; what it spawns starts there.
fn join_cgroup(tasks: &Path) -> anyhow::Result<()> {
    let me = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    let tid = me
        .file_name()
        .and_then(|n| n.to_str())
        .context("no thread id in /proc/thread-self")?
        .to_string();
    std::fs::OpenOptions::new()
        .write(true)
        .open(tasks)
        .and_then(|mut f| f.write_all(tid.as_bytes()))
        .with_context(|| format!("joining {}", tasks.display()))
}

/// CPU time of every thread of process `pid` so far (`/proc/PID/task/*/schedstat`).
fn cpu_time_ms(pid: u32) -> anyhow::Result<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .context("unreadable schedstat")?;
    }
    Ok(ns as f64 / 1e6)
}

/// The cgroup v1 CPU controller's root.
struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    fn find() -> anyhow::Result<Self> {
        let root = PathBuf::from("/sys/fs/cgroup/cpu");
        anyhow::ensure!(
            root.join("cpu.cfs_quota_us").exists(),
            "this tool sets quotas through cgroup v1's cpu controller, not mounted at {}",
            root.display()
        );
        Ok(Self { root })
    }

    /// A cgroup limited to `share` of a core, counted per `period`.
    fn create(&self, memory_mb: u32, share: f64, period: Duration) -> anyhow::Result<Quota> {
        let dir = self.root.join(format!(
            "ihub-cold-start-{}-{memory_mb}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} (needs root)", dir.display()))?;
        let period_us = period.as_micros().max(1000) as u64;
        let quota_us = ((period_us as f64 * share).round() as u64).max(1000);
        let write = |file: &str, value: u64| {
            std::fs::write(dir.join(file), value.to_string())
                .with_context(|| format!("writing {}", dir.join(file).display()))
        };
        write("cpu.cfs_period_us", period_us)?;
        write("cpu.cfs_quota_us", quota_us)?;
        Ok(Quota {
            tasks: dir.join("tasks"),
            dir,
        })
    }
}

/// One memory size's cgroup; removed when dropped, a failed run included (its function
/// has been killed and reaped by then, so the cgroup is empty).
struct Quota {
    dir: PathBuf,
    tasks: PathBuf,
}

impl Drop for Quota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(binary: &str) -> ColdStartArgs {
        ColdStartArgs {
            binary: binary.into(),
            event: "unused.json".into(),
            memory: vec![1769],
            period: Duration::from_millis(10),
            runs: 1,
            warm: 0,
            timeout: Duration::from_secs(20),
            log: "unused.log".into(),
            prices: None,
            json: None,
            dynamodb_tls: None,
            env: Vec::new(),
        }
    }

    #[test]
    fn lambda_bills_whole_milliseconds_of_the_memory_size() {
        let p = Prices {
            gb_second: 1.0,
            request: 0.5,
        };
        // 2.1 ms is billed as 3 ms; 512 MB is half a GB.
        assert!((p.invocation(512, 2.1) - (0.003 * 0.5 + 0.5)).abs() < 1e-12);
        assert!((p.invocation(1024, 3.0) - (0.003 + 0.5)).abs() < 1e-12);
    }

    #[tokio::test]
    async fn a_function_that_exits_or_is_missing_is_reported_at_once() {
        for (binary, says) in [
            ("/bin/false", "the function exited"),
            ("/nonexistent/predict", "/nonexistent/predict"),
        ] {
            let log = tempfile::tempfile().unwrap();
            let err = cold_start(&args(binary), b"{}", 1769, None, &log)
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains(says), "{binary}: {err:#}");
        }
    }

    #[test]
    fn an_answer_other_than_2xx_fails_the_run() {
        assert!(check_answer(br#"{"statusCode": 200, "body": "{}"}"#).is_ok());
        let err = check_answer(br#"{"statusCode": 401, "body": "no token"}"#).unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        assert!(check_answer(b"not json").is_err());
    }
}
