//! `make bench-tabular`: the tree-ensemble demo model (`models/wine`, a scikit-learn random
//! forest exported by skl2onnx), interleaved in one run:
//!
//! 1. In process, at batch 1 and 256: the worker's model (ONNX Runtime through `ort`, the
//!    worker's shared thread pool) against ONNX Runtime from Python on the same `.onnx`
//!    file (`ort_tabular.py`, timing its own `session.run` calls so neither side pays for
//!    the pipe) with one intra-op thread and with two (every core here).
//! 2. Over mutual-TLS gRPC: the release worker binary answering 1 caller and 32 concurrent
//!    callers (one row per `PredictBatch` call, as the gateway sends), against the worker's
//!    model in process at batch 1 and batch 32: what the server, TLS, the batcher and the
//!    client cost, as a ratio.
//!
//! Writes the tables to `target/bench-tabular.md` and a plot to `docs/bench-tabular.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use common::{PyBridge, WorkerProcess, calls_for, one_and_many, per_call, ratio_svg, root};
use inferencehub_bench::load::Input;
use inferencehub_worker::models::{LoadOptions, ModelInput, load_model};
use serde_json::{Value, json};

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

/// Seconds per call of `f`, best of five samples of about 0.3 s.
fn best_seconds(mut f: impl FnMut()) -> f64 {
    let calls = calls_for(0.3, 3, 200_000, &mut f);
    (0..5)
        .map(|_| per_call(calls, &mut f))
        .fold(f64::MAX, f64::min)
}

#[tokio::main]
async fn main() {
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
    let worst = inferencehub_devkit::largest_error(
        ours.iter()
            .zip(&theirs)
            .flat_map(|(a, b)| a.row.iter().zip(b).map(|(x, y)| (x - y).abs())),
    );
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
        let mut forward = || {
            std::hint::black_box(model.model.forward(&inputs).unwrap());
        };
        let reps = calls_for(0.3, 3, 200_000, &mut forward);
        let (mut w, mut o1, mut o2) = (f64::MAX, f64::MAX, f64::MAX);
        for round in 0..5 {
            w = w.min(per_call(reps, &mut forward));
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
        "| batch | worker in process (predictions/s) | ONNX Runtime (Python) 1 thread | ratio | ONNX Runtime (Python) 2 threads | ratio |"
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

    // 2. The worker binary over gRPC against its own model in process.
    eprintln!("gRPC: the release worker binary, 1 caller, then 32");
    let held_out = rows(64);
    let (process, target) =
        WorkerProcess::serve_one(&model_dir, "wine", &Input::Features(held_out[0].clone())).await;
    let inputs: Vec<Input> = held_out.iter().cloned().map(Input::Features).collect();
    let (one, many) = one_and_many(Arc::new(target), "wine", &inputs, 200, (1_000, 6_400)).await;
    let mean_batch = many.mean_batch.unwrap_or(0.0);
    drop(process);
    let mut in_process = |n: usize| {
        let batch: Vec<ModelInput> = rows(n).into_iter().map(ModelInput::Features).collect();
        n as f64
            / best_seconds(|| {
                std::hint::black_box(model.model.forward(&batch).unwrap());
            })
    };
    let (alone1, alone32) = (in_process(1), in_process(32));
    writeln!(
        md,
        "\nThrough mutual-TLS gRPC (release worker binary, one row per call):\n\n\
         | load | predictions/s | p50 ms | in process | predictions/s | gRPC / in process |\n\
         |---|---:|---:|---|---:|---:|\n\
         | 1 caller | {:.0} | {:.2} | batch 1 | {alone1:.0} | {:.2}x |\n\
         | 32 callers (mean batch {mean_batch:.1}) | {:.0} | {:.2} | batch 32 | {alone32:.0} | {:.2}x |",
        one.rps,
        one.p50_ms,
        one.rps / alone1,
        many.rps,
        many.p50_ms,
        many.rps / alone32
    )
    .unwrap();
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
