//! `make bench-tabular`: the tree-ensemble demo model (`models/wine`, a scikit-learn random
//! forest exported by skl2onnx) on the worker's interpreter against ONNX Runtime on the same
//! `.onnx` file, interleaved in one run, at batch 1 and 256.
//!
//! ONNX Runtime runs in a Python process of its own (`ort_tabular.py`) and times its own
//! `session.run` calls, so neither side pays for the pipe. The worker's side is the
//! `Classifier` the batcher calls (one thread, or every core through rayon for batches of
//! 64 rows or more). ONNX Runtime is measured with one intra-op thread and with two
//! (every core here).
//!
//! Writes the table to `target/bench-tabular.md` and a plot to `docs/bench-tabular.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{PyBridge, ratio_svg};
use inferencehub_worker::models::{LoadOptions, ModelInput, load_model};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Held-out wine rows (from the scikit-learn forest fixture), repeated to `n`.
fn rows(n: usize) -> Vec<Vec<f32>> {
    let path = root().join("gpu-worker/tests/fixtures/onnx/sklearn-random-forest/expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let all: Vec<Vec<f32>> = serde_json::from_value(expected["inputs"].clone()).unwrap();
    all.iter().cycle().take(n).cloned().collect()
}

struct Row {
    batch: usize,
    worker: f64,
    ort1: f64,
    ort2: f64,
}

fn main() {
    let model_dir = root().join("models/wine");
    assert!(
        model_dir.join("model.onnx").is_file(),
        "run `make models` first"
    );
    let mut model = load_model(
        &model_dir,
        "wine",
        &LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: candle_core::DType::F32,
            max_prompt_bytes: 0,
        },
    )
    .unwrap();
    let onnx = model_dir.join("model.onnx");
    let ort = |threads: &str| {
        PyBridge::start(
            "ort_tabular.py",
            &[
                std::ffi::OsStr::new("--model"),
                onnx.as_os_str(),
                std::ffi::OsStr::new("--threads"),
                std::ffi::OsStr::new(threads),
            ],
        )
    };
    let mut ort1 = ort("1");
    let mut ort2 = ort("2");

    // Same answers first: a benchmark of different results measures nothing.
    let check = rows(64);
    let ours = model
        .model
        .forward(
            &check
                .iter()
                .cloned()
                .map(ModelInput::Features)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let theirs: Vec<Vec<f32>> = serde_json::from_value(
        ort1.call(json!({"cmd": "predict", "rows": check}))["probabilities"].clone(),
    )
    .unwrap();
    let worst = ours
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-5,
        "the worker and ONNX Runtime disagree by {worst}"
    );
    println!(
        "wine forest ({}), ONNX Runtime {}: probabilities agree within {worst:.1e}",
        model.info.architecture, ort1.version
    );

    let mut table = Vec::new();
    for batch in [1usize, 256] {
        let data = rows(batch);
        let inputs: Vec<ModelInput> = data.iter().cloned().map(ModelInput::Features).collect();
        // About 0.3 s per measurement; five interleaved rounds, best of each.
        let started = Instant::now();
        model.model.forward(&inputs).unwrap();
        let one = started.elapsed().as_secs_f64().max(1e-6);
        let reps = ((0.3 / one) as usize).clamp(3, 200_000);
        let (mut w, mut o1, mut o2) = (f64::MAX, f64::MAX, f64::MAX);
        for round in 0..5 {
            let started = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(model.model.forward(&inputs).unwrap());
            }
            w = w.min(started.elapsed().as_secs_f64() / reps as f64);
            o1 = o1.min(ort1.seconds("rows", json!(data), reps) / reps as f64);
            o2 = o2.min(ort2.seconds("rows", json!(data), reps) / reps as f64);
            eprintln!("  batch {batch}: round {} of 5", round + 1);
        }
        let per_s = |t: f64| batch as f64 / t;
        table.push(Row {
            batch,
            worker: per_s(w),
            ort1: per_s(o1),
            ort2: per_s(o2),
        });
    }

    let mut md = String::new();
    writeln!(
        md,
        "| batch | worker (predictions/s) | ONNX Runtime 1 thread | ratio | ONNX Runtime 2 threads | ratio |"
    )
    .unwrap();
    writeln!(md, "|---:|---:|---:|---:|---:|---:|").unwrap();
    for r in &table {
        writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.2}x |",
            r.batch,
            r.worker,
            r.ort1,
            r.worker / r.ort1,
            r.ort2,
            r.worker / r.ort2
        )
        .unwrap();
    }
    print!("{md}");
    std::fs::write(root().join("target/bench-tabular.md"), &md).unwrap();
    std::fs::write(root().join("docs/bench-tabular.svg"), svg(&table)).unwrap();
    println!("table: target/bench-tabular.md, plot: docs/bench-tabular.svg");
}

fn svg(rows: &[Row]) -> String {
    let groups: Vec<(String, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            (
                format!("batch {}", r.batch),
                vec![r.worker / r.ort1, r.worker / r.ort2],
            )
        })
        .collect();
    ratio_svg(
        "Wine forest: worker predictions/s relative to ONNX Runtime (same run; higher is better)",
        &groups,
        &[
            ("vs ONNX Runtime, 1 thread", "#2b6cb0"),
            ("vs ONNX Runtime, 2 threads", "#90cdf4"),
        ],
    )
}
