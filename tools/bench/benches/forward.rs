//! `make bench-worker`: the worker's forward pass side by side with ONNX Runtime on the same
//! weights and the same token ids, interleaved in one run (this machine's timings swing
//! between runs, so only same-run ratios count), then the worker over gRPC.
//!
//! 1. ONNX Runtime (`ort_encoder.py`: a graph of the same encoder built from the same
//!    `model.safetensors`, 2 intra-op threads) must give the worker's sentence embeddings
//!    within 1e-4 before anything is timed.
//! 2. Cells batch {1, 8, 32} x {short sentences, 128 tokens}, plus a batch mixing both:
//!    sentences/s of ONNX Runtime, of the worker's encoder and of candle's `BertModel` (the
//!    engine it replaced), best of three interleaved rounds each.
//! 3. 1 and 32 concurrent callers (the project's load generator, one input per
//!    `PredictBatch` call as the gateway sends) through mutual-TLS gRPC to the release
//!    worker binary, against the encoder's own offline batch-32 throughput, and the
//!    worker's resident memory before and after the load.
//!
//! Writes the table to `target/bench-worker.md` and the plot to `docs/bench-worker-cpu.svg`.
//! `IHUB_BENCH_DIST=<cell>` (e.g. `"8 x 128"`) prints that cell's spread over 40 rounds
//! instead: quantiles of each engine's speed and of the round-by-round ratio.
//! With `IHUB_WORKER_THREADS=N` (`make bench-worker THREADS=N`) every side computes on N
//! threads — the worker's encoder, ONNX Runtime's intra-op pool and the worker process over
//! gRPC — and the table goes to `target/bench-worker-Nt.md` (no plot). The encoder's
//! threads are pinned as the worker pins them (`IHUB_WORKER_PIN_THREADS`: auto, on, off).
//! With `IHUB_WORKER_ISA=avx2` (`make bench-worker ISA=avx2`) the encoder, in process and
//! over gRPC, runs that instruction set's kernels (the AVX2 path measured on an AVX-512
//! host; ONNX Runtime's process is then told by CPUID that the CPU has no AVX-512, so that
//! its AVX2 kernels run too: `cpuid/hide_avx512.c`), and the table goes to
//! `target/bench-worker-avx2.md` (no plot).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use clap::ValueEnum;
use common::{PyBridge, WorkerProcess, ratio_svg, root};
use inferencehub_bench::load::{Input, closed_loop, input_for};
use inferencehub_worker::config::{InstructionSet, PinThreads};
use inferencehub_worker::kernels;
use inferencehub_worker::models::ModelInput;
use inferencehub_worker::models::bert::encoder::{BertBody, load_body, read_weights};
use inferencehub_worker::models::tokens::{load_tokenizer, pad_batch};
use serde_json::json;

const SECONDS_PER_SAMPLE: f64 = 0.6;
const ROUNDS: usize = 3;
/// Requests in each 32-caller load over gRPC.
const LOAD_REQUESTS: u64 = 640;

/// An encoder the cells time: the worker's, or candle-transformers' `BertModel` (the engine
/// the CPU encoder replaced, run here only), both mean-pooled and normalised.
trait Encoder {
    fn embed(&self, ids: &[Vec<u32>]);
}

impl Encoder for BertBody {
    fn embed(&self, ids: &[Vec<u32>]) {
        std::hint::black_box(BertBody::embed(self, &inputs(ids), true).unwrap());
    }
}

/// candle-transformers' `BertModel` on padded batches.
struct CandleBert {
    model: BertModel,
    pad_id: u32,
}

impl CandleBert {
    fn load(dir: &Path) -> CandleBert {
        let config: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let tensors = read_weights(dir, &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        CandleBert {
            model: BertModel::load(vb, &config).unwrap(),
            pad_id: config.pad_token_id as u32,
        }
    }
}

impl Encoder for CandleBert {
    fn embed(&self, ids: &[Vec<u32>]) {
        let rows: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let (ids, mask) = pad_batch(&rows, self.pad_id, &Device::Cpu).unwrap();
        let hidden = self
            .model
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap();
        let mask = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let summed = hidden.broadcast_mul(&mask).unwrap().sum(1).unwrap();
        let mean = summed.broadcast_div(&mask.sum(1).unwrap()).unwrap();
        let norm = mean.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        std::hint::black_box(mean.broadcast_div(&norm).unwrap().to_vec2::<f32>().unwrap());
    }
}

/// The ONNX Runtime process (`ort_encoder.py`).
struct Ort(PyBridge);

impl Ort {
    /// ONNX Runtime on `threads` intra-op threads; with `hide_avx512`, in a process that
    /// CPUID tells the CPU has no AVX-512 (`inferencehub_bench::cpuid`), so that its AVX2 kernels
    /// run, as on an AVX2-only CPU.
    fn start(model_dir: &Path, threads: usize, hide_avx512: bool) -> Ort {
        let threads = threads.to_string();
        let library = hide_avx512.then(|| {
            assert!(
                inferencehub_bench::cpuid::can_hide_avx512(),
                "ISA=avx2 on an AVX-512 host needs CPUID faulting (cpuid_fault) to run ONNX Runtime's AVX2 kernels beside it"
            );
            inferencehub_bench::cpuid::hide_avx512_library(&root().join("target")).unwrap()
        });
        let preload: Vec<(&str, &std::ffi::OsStr)> = library
            .iter()
            .map(|l| ("LD_PRELOAD", l.as_os_str()))
            .collect();
        let bridge = PyBridge::start_env(
            "ort_encoder.py",
            &[
                std::ffi::OsStr::new("--model-dir"),
                model_dir.as_os_str(),
                std::ffi::OsStr::new("--threads"),
                std::ffi::OsStr::new(&threads),
            ],
            &preload,
        );
        let sees_avx512 = bridge.ready["avx512f"].as_bool();
        assert!(
            !hide_avx512 || sees_avx512 == Some(false),
            "AVX-512 not hidden from ONNX Runtime's process: it reads {sees_avx512:?}"
        );
        Ort(bridge)
    }

    fn embed(&mut self, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
        serde_json::from_value(
            self.0.call(json!({"cmd": "embed", "ids": ids}))["embedding"].clone(),
        )
        .unwrap()
    }

    fn seconds(&mut self, ids: &[Vec<u32>], reps: usize) -> f64 {
        self.0.seconds("ids", json!(ids), reps)
    }
}

fn inputs(ids: &[Vec<u32>]) -> Vec<ModelInput> {
    ids.iter().map(|r| ModelInput::Tokens(r.clone())).collect()
}

fn encoder_seconds(encoder: &dyn Encoder, ids: &[Vec<u32>], reps: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..reps {
        encoder.embed(ids);
    }
    started.elapsed().as_secs_f64()
}

/// Sentences/s of `run(reps)`: reps chosen so one sample takes about
/// [`SECONDS_PER_SAMPLE`].
fn calibrate(one: f64) -> usize {
    ((SECONDS_PER_SAMPLE / one.max(1e-6)).ceil() as usize).clamp(1, 2000)
}

/// Token ids of the benchmark's inputs: sentences of 10-25 tokens, and 128-token texts.
fn token_sets(model_dir: &Path) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let tokenizer = load_tokenizer(model_dir, 128).unwrap();
    let sentences = inferencehub_devkit::demo_sentences();
    let encode = |s: &str| -> Vec<u32> { tokenizer.tokenize(s).unwrap().0 };
    let short: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| encode(s))
        .filter(|ids| (10..=25).contains(&ids.len()))
        .take(64)
        .collect();
    let long: Vec<Vec<u32>> = (0..32)
        .map(|i| {
            let text: Vec<&str> = sentences
                .iter()
                .cycle()
                .skip(i * 7)
                .take(20)
                .map(String::as_str)
                .collect();
            encode(&text.join(" "))
        })
        .collect();
    assert!(short.len() >= 32 && long.iter().all(|r| r.len() == 128));
    (short, long)
}

struct Cell {
    label: String,
    ids: Vec<Vec<u32>>,
}

/// The cell labelled `label` (as the table prints it, e.g. `8 x 128`), for the modes that
/// time one or a few cells.
fn cell_named<'a>(cells: &'a [Cell], label: &str) -> &'a Cell {
    cells.iter().find(|c| c.label == label).unwrap_or_else(|| {
        let names: Vec<&str> = cells.iter().map(|c| c.label.as_str()).collect();
        panic!("no cell {label:?}; the cells: {names:?}")
    })
}

struct Measured {
    label: String,
    ort: f64,
    worker: f64,
    candle: f64,
}

/// Every engine's thread pool spins for a moment after a run; a pause between engines keeps
/// one's spinning threads from slowing the other's first samples.
fn pause() {
    std::thread::sleep(Duration::from_millis(100));
}

/// Times `cell` on ONNX Runtime, the worker and (when given) candle's `BertModel`.
fn measure(cell: &Cell, ort: &mut Ort, worker: &BertBody, candle: Option<&CandleBert>) -> Measured {
    let n = cell.ids.len() as f64;
    // One warm-up call each, which also sizes the samples.
    let t_ort = ort.seconds(&cell.ids, 1);
    let t_worker = encoder_seconds(worker, &cell.ids, 1);
    let t_candle = candle.map_or(0.0, |c| encoder_seconds(c, &cell.ids, 1));
    let (r_ort, r_worker, r_candle) = (calibrate(t_ort), calibrate(t_worker), calibrate(t_candle));
    let (mut best_ort, mut best_worker, mut best_candle) = (0f64, 0f64, 0f64);
    for _ in 0..ROUNDS {
        pause();
        best_ort = best_ort.max(n * r_ort as f64 / ort.seconds(&cell.ids, r_ort));
        pause();
        best_worker =
            best_worker.max(n * r_worker as f64 / encoder_seconds(worker, &cell.ids, r_worker));
        if let Some(candle) = candle {
            pause();
            best_candle =
                best_candle.max(n * r_candle as f64 / encoder_seconds(candle, &cell.ids, r_candle));
        }
    }
    Measured {
        label: cell.label.clone(),
        ort: best_ort,
        worker: best_worker,
        candle: best_candle,
    }
}

/// Rounds of [`distribution`].
const DIST_ROUNDS: usize = 40;

/// `cell` over [`DIST_ROUNDS`] rounds (ONNX Runtime, then the worker, each for half a
/// sample): the 10th, 25th, 50th, 75th and 90th percentiles and the extremes of either
/// engine's sentences/s and of the worker / ONNX Runtime ratio round by round.
fn distribution(cell: &Cell, ort: &mut Ort, worker: &BertBody) -> String {
    let n = cell.ids.len() as f64;
    let r_ort = calibrate(ort.seconds(&cell.ids, 1)).div_ceil(2);
    let r_worker = calibrate(encoder_seconds(worker, &cell.ids, 1)).div_ceil(2);
    let (mut onnx, mut ours, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..DIST_ROUNDS {
        pause();
        let o = n * r_ort as f64 / ort.seconds(&cell.ids, r_ort);
        pause();
        let w = n * r_worker as f64 / encoder_seconds(worker, &cell.ids, r_worker);
        onnx.push(o);
        ours.push(w);
        ratio.push(w / o);
    }
    let mut out = format!(
        "{}, {DIST_ROUNDS} rounds\n\n| | min | p10 | p25 | median | p75 | p90 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        cell.label
    );
    for (name, values) in [
        ("ONNX Runtime, sentences/s", &mut onnx),
        ("worker, sentences/s", &mut ours),
        ("worker / ONNX Runtime", &mut ratio),
    ] {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        out += &format!("| {name} |");
        for q in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
            out += &format!(" {:.2} |", at(q));
        }
        out += "\n";
    }
    out
}

fn check_embeddings(ort: &mut Ort, worker: &BertBody, ids: &[Vec<u32>]) -> f32 {
    let want = ort.embed(ids);
    let got = worker
        .embed(&inputs(ids), true)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let diff = inferencehub_devkit::largest_error(
        want.iter()
            .flatten()
            .zip(got.iter().flatten())
            .map(|(a, b)| (a - b).abs()),
    );
    assert!(
        diff <= 1e-4,
        "the ONNX graph and the worker disagree by {diff}: fix the graph before timing"
    );
    diff
}

/// The CPU seconds this process's threads have run, to the microsecond: the sum of their
/// scheduler's `se.sum_exec_runtime` (milliseconds, in `/proc/self/task/*/sched`). `None`
/// where the kernel does not expose it.
fn own_cpu_seconds() -> Option<f64> {
    let mut ms = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let sched = std::fs::read_to_string(task.ok()?.path().join("sched")).ok()?;
        ms += sched
            .lines()
            .find_map(|l| l.strip_prefix("se.sum_exec_runtime"))?
            .trim_start_matches([' ', ':'])
            .trim()
            .parse::<f64>()
            .ok()?;
    }
    Some(ms / 1e3)
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn svg(rows: &[Measured]) -> String {
    let groups: Vec<(String, Vec<f64>)> = rows
        .iter()
        .map(|r| (r.label.clone(), vec![r.worker / r.ort, r.candle / r.ort]))
        .collect();
    ratio_svg(
        "Forward pass speed relative to ONNX Runtime (same run, same token ids; higher is better)",
        &groups,
        &[
            ("worker (CPU encoder)", "#2b6cb0"),
            ("candle BertModel (before)", "#a0aec0"),
        ],
    )
}

/// The worker setting in `var`, read as the worker reads it (its clap value names), or
/// `default` when unset; a value the worker would refuse stops the bench.
fn worker_setting<T: ValueEnum>(var: &str, default: T) -> T {
    std::env::var(var).map_or(default, |v| {
        T::from_str(&v, false).unwrap_or_else(|e| panic!("{var}: {e}"))
    })
}

#[tokio::main]
async fn main() {
    let model_dir = root().join("models/sentiment");
    assert!(model_dir.is_dir(), "run `make models` first");
    let chosen: Option<usize> = std::env::var("IHUB_WORKER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let threads = chosen.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Pinned as the worker pins its pool.
    let pinning = worker_setting("IHUB_WORKER_PIN_THREADS", PinThreads::Auto);
    let pinned = kernels::build_compute_pool(threads, pinning.into()).unwrap();
    let placement = if pinned.is_empty() {
        String::new()
    } else {
        format!(", pinned to CPUs {pinned:?}")
    };
    // The kernels' instruction set as the worker chooses it: the widest the CPU has, or a
    // narrower one to measure that path here.
    let isa_chosen = worker_setting("IHUB_WORKER_ISA", InstructionSet::Auto);
    let isa = isa_chosen.apply().unwrap().name();
    let cpu = common::cpu_model();
    let (short, long) = token_sets(&model_dir);
    let (worker, _) = load_body(&model_dir, &Device::Cpu, candle_core::DType::F32).unwrap();
    let candle = CandleBert::load(&model_dir);
    // ONNX Runtime's intra-op pool: the threads chosen, else two (this machine's cores).
    let ort_threads = chosen.unwrap_or(2);
    // With the worker on AVX2 where the CPU has AVX-512, ONNX Runtime on AVX2 too.
    let hide_avx512 = isa_chosen == InstructionSet::Avx2 && kernels::Isa::named("avx512").is_some();
    let mut ort = Ort::start(&model_dir, ort_threads, hide_avx512);
    let ort_isa = if hide_avx512 {
        ", AVX-512 hidden from it"
    } else {
        ""
    };

    let mut check_ids: Vec<Vec<u32>> = short[..8].to_vec();
    check_ids.extend(long[..4].iter().cloned());
    let diff = check_embeddings(&mut ort, &worker, &check_ids);
    eprintln!(
        "embeddings agree with ONNX Runtime {}: max |diff| = {diff:.2e}",
        ort.0.version
    );

    let mixed: Vec<Vec<u32>> = short[..16].iter().chain(&long[..16]).cloned().collect();
    let mut cells = Vec::new();
    for n in [1usize, 8, 32] {
        cells.push(Cell {
            label: format!("{n} x short"),
            ids: short[..n].to_vec(),
        });
    }
    for n in [1usize, 8, 32] {
        cells.push(Cell {
            label: format!("{n} x 128"),
            ids: long[..n].to_vec(),
        });
    }
    cells.push(Cell {
        label: "16 short + 16 x 128".into(),
        ids: mixed,
    });
    // IHUB_BENCH_ONLY=<label> times one cell alone, repeatedly (for profiling).
    if let Ok(only) = std::env::var("IHUB_BENCH_ONLY") {
        let cell = cell_named(&cells, &only);
        let started = Instant::now();
        let mut reps = 0;
        while started.elapsed() < Duration::from_secs(20) {
            encoder_seconds(&worker, &cell.ids, 1);
            reps += 1;
        }
        println!(
            "{}: {:.1} sentences/s",
            cell.label,
            (reps * cell.ids.len()) as f64 / started.elapsed().as_secs_f64()
        );
        return;
    }
    // IHUB_BENCH_CELLS=<label>,<label>: those cells against ONNX Runtime only, no table
    // files, no gRPC (a quick same-run check while working on one cell).
    if let Ok(only) = std::env::var("IHUB_BENCH_CELLS") {
        for label in only.split(',') {
            let cell = cell_named(&cells, label);
            let r = measure(cell, &mut ort, &worker, None);
            println!(
                "{}: ONNX Runtime {:.1}, worker {:.1} sentences/s ({:.2}x)",
                r.label,
                r.ort,
                r.worker,
                r.worker / r.ort
            );
        }
        return;
    }
    // IHUB_BENCH_DIST=<label>: that cell's spread rather than its best: DIST_ROUNDS rounds
    // of half-length samples, the two engines in turn, and the quantiles of each one's
    // sentences/s and of the round-by-round ratio (on a busy machine the best rounds and
    // the typical ones can tell different stories).
    if let Ok(label) = std::env::var("IHUB_BENCH_DIST") {
        let cell = cell_named(&cells, &label);
        println!("{}", distribution(cell, &mut ort, &worker));
        return;
    }
    let ort_version = ort.0.version.clone();
    let mut rows = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, cells.len(), cell.label);
        rows.push(measure(cell, &mut ort, &worker, Some(&candle)));
    }
    drop(ort);

    // Batch 1 latency, from the same samples.
    let mut table = format!(
        "Forward pass, sentences/s (best of {ROUNDS} interleaved rounds; ONNX Runtime {} with {} intra-op threads{ort_isa}; the worker on {threads} threads{placement}, {isa}; {cpu})\n\n\
         | cell (batch x text) | ONNX Runtime | worker | ratio | candle BertModel (before) | ratio |\n\
         |---|---|---|---|---|---|\n",
        ort_version, ort_threads
    );
    for r in &rows {
        table += &format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.2} |\n",
            r.label,
            r.ort,
            r.worker,
            r.worker / r.ort,
            r.candle,
            r.candle / r.ort
        );
    }
    let short1 = &rows[0];
    table += &format!(
        "\nBatch 1 x short latency: ONNX Runtime {:.2} ms, worker {:.2} ms ({:.2}x).\n",
        1e3 / short1.ort,
        1e3 / short1.worker,
        short1.ort / short1.worker
    );
    let all_long = &rows[5];
    let mixed = &rows[6];
    table += &format!(
        "Mixed batch (16 short + 16 x 128): {:.1} sentences/s vs {:.1} for 32 x 128: packing makes it cost {:.0}% of an all-128 batch.\n",
        mixed.worker,
        all_long.worker,
        100.0 * all_long.worker / mixed.worker
    );

    // gRPC: the release worker binary, 1 and 32 concurrent callers.
    let (process, target) =
        WorkerProcess::serve_one(&model_dir, "sentiment", &Input::Text("warm up".into())).await;
    let pid = process.child.id().unwrap();
    let target = Arc::new(target);
    let rss_loaded = rss_mb(pid);
    let prompts = inferencehub_devkit::demo_sentences();
    eprintln!("gRPC: 1 caller, then 32");
    let inputs: Vec<Input> = prompts.iter().map(|p| Input::Text(p.clone())).collect();
    let load = |callers, requests| {
        closed_loop(
            target.clone(),
            "sentiment",
            inputs.clone(),
            callers,
            requests,
        )
    };
    load(4, 40).await;
    let one = load(1, 200).await.rps;
    // The encoder's own batch-32 forward throughput, offline, on the load's sentences (its
    // requests' inputs in the order it sends them, 32 at a time), timed in the rounds of
    // the 32-caller load, one after the other: the machine's speed drifts by a quarter over
    // minutes here, and the ratio should not depend on which half of the run drew the slow
    // minute.
    let tokenizer = load_tokenizer(&model_dir, 128).unwrap();
    let sent: Vec<Vec<u32>> = (0..LOAD_REQUESTS)
        .map(|i| {
            tokenizer
                .tokenize(&prompts[input_for(i, 1, prompts.len())])
                .unwrap()
                .0
        })
        .collect();
    let offline_pass = || -> f64 {
        sent.chunks(32)
            .map(|batch| encoder_seconds(&worker, batch, 1))
            .sum()
    };
    let reps = calibrate(offline_pass());
    let (mut many, mut batch, mut offline) = (0f64, 0f64, 0f64);
    let (mut passes, mut client_cpu) = (None, None);
    for _ in 0..ROUNDS {
        pause();
        let cpu = own_cpu_seconds();
        let s = load(32, LOAD_REQUESTS).await;
        let cpu = own_cpu_seconds()
            .zip(cpu)
            .map(|(after, before)| after - before);
        assert_eq!(s.failed, 0, "{:?}", s.statuses);
        if s.rps > many {
            (many, batch, passes) = (s.rps, s.mean_batch.unwrap_or(0.0), s.passes);
            client_cpu = cpu.map(|c| c / s.sent.max(1) as f64);
        }
        pause();
        let secs: f64 = (0..reps).map(|_| offline_pass()).sum();
        offline = offline.max((sent.len() * reps) as f64 / secs);
    }
    let rss_after = rss_mb(pid);
    table += &format!(
        "\nThrough mutual-TLS gRPC (release worker binary, `sentiment`, the demo set's sentences):\n\n\
         | load | predictions/s | vs offline batch-32 forward |\n|---|---|---|\n\
         | offline forward, batch 32 (the load's sentences, in its order) | {offline:.1} | 1.00 |\n\
         | 1 caller | {one:.1} | {:.2} |\n\
         | 32 concurrent callers (mean batch {batch:.1}) | {many:.1} | {:.2} |\n\
         {}\nWorker resident memory: {rss_loaded:.0} MB with the model loaded, {rss_after:.0} MB after the load.\n",
        one / offline,
        many / offline,
        passes.map_or(String::new(), |p| format!(
            "\nWith 32 callers the forward passes took {:.1} % of the wall time; from the end \
             of one pass to the start of the next ({:.2} ms on average) the worker answered \
             the batch's callers and took their next inputs.{}\n",
            100.0 * p.share,
            p.gap_ms,
            client_cpu.map_or(String::new(), |c| format!(
                " The load generator runs on the same cores: it used {:.0} µs of CPU a \
                 request, {:.2} ms a pass.",
                c * 1e6,
                c * 1e3 * batch
            ))
        ))
    );
    drop(process);

    println!("\n{table}");
    // A chosen thread count or instruction set: a table of its own, and no plot (the docs'
    // plot is the default run's).
    let suffix: String = [
        chosen.map(|n| format!("-{n}t")),
        (isa_chosen != InstructionSet::Auto).then(|| format!("-{isa}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !suffix.is_empty() {
        let out = root().join(format!("target/bench-worker{suffix}.md"));
        std::fs::write(&out, &table).unwrap();
        eprintln!("wrote {}", out.display());
        return;
    }
    let out = root().join("target/bench-worker.md");
    std::fs::write(&out, &table).unwrap();
    let plot = root().join("docs/bench-worker-cpu.svg");
    std::fs::create_dir_all(plot.parent().unwrap()).unwrap();
    std::fs::write(&plot, svg(&rows)).unwrap();
    eprintln!("wrote {} and {}", out.display(), plot.display());
}
