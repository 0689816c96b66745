//! Measurements of one model on one device, for machines that have no Rust toolchain (the
//! GPU check in `scripts/bench-gpu.sh` carries this binary, built with `--features cuda`):
//!
//! - `classify`: one model's answers for a file of inputs, as JSON lines (the correctness
//!   half: the same file on CPU f32 and GPU f16 must agree);
//! - `bench-encoder`: the text encoder's forward pass, timed over stdin/stdout so a Python
//!   driver can interleave it with PyTorch on the same token ids, and profiled stage by
//!   stage on the tensor encoder.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use inferencehub_worker::models::bert::encoder::{BertBody, load_body};
use inferencehub_worker::models::bert::tensor::TensorBert;
use inferencehub_worker::models::device::{parse_device, parse_dtype};
use inferencehub_worker::models::model::token_rows;
use inferencehub_worker::models::{LoadOptions, ModelInput, argmax, load_model};
use serde_json::json;

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
    let features = model.info.feature_count as usize;
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
        for output in model.model.forward(chunk)? {
            let probabilities = output.row;
            let (best, _) = argmax(&probabilities);
            let label = model.info.labels.get(best).cloned().unwrap_or_default();
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
/// (mean per pass, the tensor encoder only), `{"cmd": "kernels", "ids": [[...]]}` →
/// `{"kernels": "Fused"|"Reference", "max_abs_diff": x, "largest_state": y}` (the kernels
/// chosen at load, and the largest difference between one padded pass through the fused
/// and one through the reference kernels, over real tokens; `error` instead where the fused
/// kernels fail), `{"cmd": "kernel-checks"}` → `{"checks": [{"kernel", "dtype", "case",
/// "max_abs_diff", "largest", "tolerance", "passed"}, ...]}` (each fused kernel on the
/// device against its CPU computation: [`inferencehub_fused::check_kernels`]). Every
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
                    for (stage, s) in profile(&body, &inputs)? {
                        match totals.iter_mut().find(|(n, _)| *n == stage) {
                            Some((_, t)) => *t += s / reps as f64,
                            None => totals.push((stage, s / reps as f64)),
                        }
                    }
                }
                json!({"stages": totals.iter().map(|(n, s)| json!([n, s])).collect::<Vec<_>>()})
            }
            Some("kernels") => match kernels_check(&body, &inputs) {
                Ok((kernels, diff, scale)) => json!({
                    "kernels": format!("{kernels:?}"),
                    "max_abs_diff": diff,
                    "largest_state": scale,
                }),
                Err(e) => json!({"error": format!("{e:#}")}),
            },
            Some("kernel-checks") => match inferencehub_fused::check_kernels(&device) {
                Ok(checks) => json!({"checks": checks.iter().map(|c| json!({
                    "kernel": c.kernel,
                    "dtype": format!("{:?}", c.dtype),
                    "case": c.case,
                    "max_abs_diff": c.max_abs_diff,
                    "largest": c.largest,
                    "tolerance": c.tolerance,
                    "passed": c.passed(),
                })).collect::<Vec<_>>()}),
                Err(e) => json!({"error": format!("{e:#}")}),
            },
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

/// Seconds spent in each stage of one forward pass of the tensor encoder over `inputs`,
/// timed by the device itself between stages (CUDA events; the host clock on the CPU), so
/// nothing waits between stages and they add up to a plain pass; empty for the CPU
/// encoder, which has no stages to observe.
pub fn profile(body: &BertBody, inputs: &[ModelInput]) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let Some(bert) = body.tensor() else {
        return Ok(Vec::new());
    };
    stages(bert, &token_rows(inputs)?)
}

/// The tensor encoder's kernels, and [`TensorBert::compare_kernels`] over `inputs`.
fn kernels_check(
    body: &BertBody,
    inputs: &[ModelInput],
) -> anyhow::Result<(inferencehub_worker::models::bert::tensor::Kernels, f32, f32)> {
    let bert = body
        .tensor()
        .context("the CPU encoder has no fused kernels to compare")?;
    let (diff, scale) = bert.compare_kernels(&token_rows(inputs)?)?;
    Ok((bert.kernels(), diff, scale))
}

fn stages(bert: &TensorBert, rows: &[&[u32]]) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let device = bert.device().clone();
    device.synchronize()?;
    let mut stamps = vec![Stamp::now(&device)?];
    let mut names = Vec::new();
    bert.forward_observed(rows, bert.kernels(), &mut |stage| {
        stamps.push(Stamp::now(&device)?);
        names.push(stage);
        Ok(())
    })?;
    device.synchronize()?;
    let mut stages: Vec<(&'static str, f64)> = Vec::new();
    for (stage, pair) in names.into_iter().zip(stamps.windows(2)) {
        let spent = pair[0].seconds_until(&pair[1])?;
        match stages.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, total)) => *total += spent,
            None => stages.push((stage, spent)),
        }
    }
    Ok(stages)
}

/// A point in the device's work: on CUDA an event recorded on the device's stream (timed by
/// the GPU, nothing synchronised between stages, so the stages add up to a plain pass); on
/// the CPU, where every operation has finished when it returns, the host clock.
enum Stamp {
    Host(Instant),
    #[cfg(feature = "cuda")]
    Event(candle_core::cuda_backend::cudarc::driver::CudaEvent),
}

impl Stamp {
    fn now(device: &candle_core::Device) -> anyhow::Result<Self> {
        match device {
            #[cfg(feature = "cuda")]
            candle_core::Device::Cuda(cuda) => {
                use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
                let event = cuda
                    .cuda_stream()
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                Ok(Self::Event(event))
            }
            _ => Ok(Self::Host(Instant::now())),
        }
    }

    /// Seconds from `self` to `later` (waits for `later`'s work on a GPU).
    fn seconds_until(&self, later: &Self) -> anyhow::Result<f64> {
        match (self, later) {
            (Self::Host(a), Self::Host(b)) => Ok((*b - *a).as_secs_f64()),
            #[cfg(feature = "cuda")]
            (Self::Event(a), Self::Event(b)) => Ok(f64::from(a.elapsed_ms(b)?) / 1e3),
            #[cfg(feature = "cuda")]
            _ => bail!("stage stamps from two kinds of device"),
        }
    }
}
