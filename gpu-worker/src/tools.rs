//! Measurement subcommands of the worker binary, for machines that have no Rust toolchain
//! (the GPU check in `scripts/bench-gpu.sh` carries only this binary):
//!
//! - `classify`: one model's answers for a file of inputs, as JSON lines (the correctness
//!   half: the same file on CPU f32 and GPU f16 must agree);
//! - `bench-encoder`: the text encoder's forward pass, timed over stdin/stdout so a Python
//!   driver can interleave it with PyTorch on the same token ids;
//! - `load`: concurrent `Predict` callers over mutual TLS, for throughput and latency.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use inferencehub_proto::pb::PredictRequest;
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use serde_json::json;

use crate::backend::device::{parse_device, parse_dtype};
use crate::backend::text::load_body;
use crate::backend::{LoadOptions, ModelInput, argmax, load_model};
use crate::config::ClientArgs;

/// One model folder and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The model folder.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f16 on CUDA, f32 on the CPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl ModelArgs {
    fn device_and_dtype(&self) -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(self.dtype.as_deref(), &device)?;
        Ok((device, dtype))
    }
}

/// Flags of `classify`.
#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Inputs: for a text model, one per line (a TSV's first column); for a tabular
    /// model, CSV rows whose first `feature_count` columns are the features (a header
    /// line is skipped).
    #[arg(long)]
    pub input: PathBuf,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

/// `classify`: prints `{"label", "probabilities"}` per input, then a timing line on stderr.
pub fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.model.device_and_dtype()?;
    let name = args
        .model
        .model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut model = load_model(
        &args.model.model_dir,
        &name,
        &LoadOptions {
            device,
            dtype,
            max_prompt_bytes: 1 << 20,
        },
    )?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let features = model.spec.feature_count;
    let mut inputs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if model.tokenizer.is_some() {
            let prompt = line.split('\t').next().unwrap_or_default();
            inputs.push(model.prepare(prompt, &[])?);
        } else {
            let row: Result<Vec<f32>, _> = line
                .split(',')
                .take(features)
                .map(|v| v.trim().parse::<f32>())
                .collect();
            match row {
                Ok(row) if row.len() == features => inputs.push(ModelInput::Features(row)),
                _ => continue,
            }
        }
    }
    if inputs.is_empty() {
        bail!("no inputs in {}", args.input.display());
    }
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in inputs.chunks(args.batch.max(1)) {
        for probabilities in model.classifier.classify(chunk)? {
            let (best, _) = argmax(&probabilities);
            let label = model.spec.labels.get(best).cloned().unwrap_or_default();
            writeln!(
                out,
                "{}",
                json!({"label": label, "probabilities": probabilities})
            )?;
        }
    }
    eprintln!(
        "classify: {} inputs of {name} on {:?} {dtype:?} in {:.3} s",
        inputs.len(),
        args.model.device,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Flags of `bench-encoder`.
#[derive(Debug, Clone, Args)]
pub struct BenchEncoderArgs {
    /// A BERT-layout sentence encoder folder (config.json, model.safetensors).
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `bench-encoder`: answers JSON lines on stdin until EOF or `{"cmd": "quit"}`:
/// `{"cmd": "embed", "ids": [[...]]}` → `{"embedding": [[...]]}` (mean-pooled last hidden
/// states), `{"cmd": "time", "ids": [[...]], "reps": N}` → `{"seconds": total}`,
/// `{"cmd": "profile", "ids": [[...]], "reps": N}` → `{"stages": [[name, seconds], ...]}`
/// (mean per pass, the tensor encoder only). Every
/// repetition copies its result to the host, so a timing includes the device's whole work.
pub fn bench_encoder(args: &BenchEncoderArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.model.device_and_dtype()?;
    let (body, _) = load_body(&args.model.model_dir, &device, dtype)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "{}",
        json!({"ready": true, "dtype": format!("{dtype:?}")})
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let request: serde_json::Value = serde_json::from_str(&line?)?;
        let ids: Vec<Vec<u32>> =
            serde_json::from_value(request.get("ids").cloned().unwrap_or_default())
                .unwrap_or_default();
        let inputs: Vec<ModelInput> = ids.into_iter().map(ModelInput::Tokens).collect();
        let answer = match request["cmd"].as_str() {
            Some("embed") => json!({"embedding": body.embed(&inputs, false)?.to_vec2::<f32>()?}),
            Some("profile") => {
                let reps = request["reps"].as_u64().unwrap_or(1).max(1) as usize;
                let mut totals: Vec<(&str, f64)> = Vec::new();
                for _ in 0..reps {
                    for (stage, s) in body.profile(&inputs)?.unwrap_or_default() {
                        match totals.iter_mut().find(|(n, _)| *n == stage) {
                            Some((_, t)) => *t += s / reps as f64,
                            None => totals.push((stage, s / reps as f64)),
                        }
                    }
                }
                json!({"stages": totals.iter().map(|(n, s)| json!([n, s])).collect::<Vec<_>>()})
            }
            Some("time") => {
                let reps = request["reps"].as_u64().unwrap_or(1) as usize;
                let started = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(body.embed(&inputs, false)?.to_vec2::<f32>()?);
                }
                json!({"seconds": started.elapsed().as_secs_f64()})
            }
            _ => break,
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// Flags of `load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Inputs, one per line (a TSV's first column): text, or comma-separated features for
    /// a tabular model. Callers cycle through them.
    #[arg(long, alias = "inputs")]
    pub prompts: PathBuf,
    /// Concurrent callers, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub callers: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

/// `load`: prints `{"callers", "requests", "errors", "per_second", "p50_ms", "p99_ms",
/// "mean_batch"}`.
pub async fn load(args: &LoadArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.prompts)?;
    // A line of numbers is a feature row; anything else is a prompt.
    let prompts: Arc<Vec<(String, Vec<f32>)>> = Arc::new(
        text.lines()
            .filter_map(|l| l.split('\t').next())
            .filter(|p| !p.trim().is_empty())
            .map(|line| {
                let numbers: Result<Vec<f32>, _> =
                    line.split(',').map(|x| x.trim().parse::<f32>()).collect();
                match numbers {
                    Ok(features) => (String::new(), features),
                    Err(_) => (line.to_string(), Vec::new()),
                }
            })
            .collect(),
    );
    if prompts.is_empty() {
        bail!("no prompts in {}", args.prompts.display());
    }
    let channel = crate::client::connect(
        &args.client.addr,
        &args.client.tls,
        Duration::from_millis(args.client.timeout_ms),
    )
    .await?;
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..args.callers {
        let mut client = ModelInferenceClient::new(channel.clone());
        let prompts = prompts.clone();
        let model = args.model.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut batch_sum) = (0usize, 0u64);
            let mut i = caller;
            while Instant::now() < until {
                let sent = Instant::now();
                let (prompt, features) = prompts[i % prompts.len()].clone();
                let r = client
                    .predict(PredictRequest {
                        model_name: model.clone(),
                        prompt,
                        features,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        batch_sum += u64::from(r.into_inner().batch_size);
                    }
                    Err(_) => errors += 1,
                }
                i += STRIDE;
            }
            (latencies, errors, batch_sum)
        }));
    }
    let mut latencies = Vec::new();
    let (mut errors, mut batch_sum) = (0, 0);
    for task in tasks {
        let (l, e, b) = task.await?;
        latencies.extend(l);
        errors += e;
        batch_sum += b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        json!({
            "callers": args.callers, "requests": latencies.len(), "errors": errors,
            "per_second": latencies.len() as f64 / elapsed,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_batch": batch_sum as f64 / latencies.len().max(1) as f64,
        })
    );
    Ok(())
}

/// Callers step through the prompts with a prime stride, so they do not all send the
/// same prompt at once.
const STRIDE: usize = 7;
