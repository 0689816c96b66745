//! `make bench-embeddings`: embeddings/s of MiniLM-L6 (the `minilm` demo model: mean
//! pooling, normalised) on the worker's own encoder against the same weights exported to
//! ONNX (`tools/python/export_sentence_encoder.py`) and run by ONNX Runtime, pooled by the
//! same code, interleaved in one run.
//!
//! 1. Both folders load as the worker loads them and must give the same vectors (cosine
//!    >= 0.9999) for the demo set's sentences before anything is timed.
//! 2. In process, embeddings/s at batch 1 and 32, of short sentences (10-25 tokens) and of
//!    128 tokens, best of three interleaved rounds each.
//!
//! sentence-transformers itself is not in the table: it needs PyTorch, whose PyPI wheels pull
//! the CUDA libraries (gigabytes) even for a CPU run.
//!
//! Writes the table to `target/bench-embeddings.md` and a plot to
//! `docs/bench-embeddings.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;

use common::{forward_seconds, load_cpu, ratio_svg, root};
use inferencehub_worker::models::ModelInput;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn main() {
    let mut own = load_cpu(&root().join("models/minilm"), "minilm", "bench-embeddings");
    let mut onnx = load_cpu(
        &root().join(".cache/bench-text/embedding-onnx"),
        "minilm-onnx",
        "bench-embeddings",
    );
    println!(
        "worker's encoder: {}; export: {}",
        own.info.architecture, onnx.info.architecture
    );

    let sentences = inferencehub_devkit::demo_sentences();
    let prepare = |s: &str| own.prepare(s, &[]).unwrap();
    let short: Vec<ModelInput> = sentences
        .iter()
        .map(|s| prepare(s))
        .filter(|i| matches!(i, ModelInput::Tokens(ids) if (10..=25).contains(&ids.len())))
        .take(32)
        .collect();
    let long: Vec<ModelInput> = (0..32)
        .map(|i| {
            let joined: Vec<&str> = sentences
                .iter()
                .cycle()
                .skip(i * 7)
                .take(20)
                .map(String::as_str)
                .collect();
            match prepare(&joined.join(" ")) {
                ModelInput::Tokens(ids) => ModelInput::Tokens(ids[..128].to_vec()),
                other => panic!("a text model gave {other:?}"),
            }
        })
        .collect();
    assert_eq!(short.len(), 32);

    // 1. Same vectors first.
    let a = own.model.forward(&short).unwrap();
    let b = onnx.model.forward(&short).unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| cosine(&x.row, &y.row))
        .fold(1.0f64, f64::min);
    assert!(worst >= 0.9999, "the two disagree: cosine {worst}");
    println!("vectors agree: lowest cosine {worst:.6}");

    // 2. In process, interleaved.
    let cells: Vec<(&str, Vec<ModelInput>)> = vec![
        ("batch 1, short", short[..1].to_vec()),
        ("batch 32, short", short.clone()),
        ("batch 1, 128 tokens", long[..1].to_vec()),
        ("batch 32, 128 tokens", long.clone()),
    ];
    let mut md = String::from(
        "| cell | worker's encoder (embeddings/s) | ONNX Runtime, same weights | worker / ONNX Runtime |\n|---|---:|---:|---:|\n",
    );
    let mut groups = Vec::new();
    for (label, inputs) in &cells {
        let (mut w, mut o) = (f64::MAX, f64::MAX);
        for round in 0..3 {
            w = w.min(forward_seconds(&mut own, inputs));
            o = o.min(forward_seconds(&mut onnx, inputs));
            eprintln!("  {label}: round {} of 3", round + 1);
        }
        let n = inputs.len() as f64;
        let (own_rate, ort_rate) = (n / w, n / o);
        writeln!(
            md,
            "| {label} | {own_rate:.1} | {ort_rate:.1} | {:.2}x |",
            own_rate / ort_rate
        )
        .unwrap();
        groups.push((label.to_string(), vec![own_rate / ort_rate]));
    }
    print!("\n{md}");
    std::fs::write(root().join("target/bench-embeddings.md"), &md).unwrap();
    std::fs::write(
        root().join("docs/bench-embeddings.svg"),
        ratio_svg(
            "MiniLM-L6 embeddings: the worker's encoder relative to ONNX Runtime (same weights, same run)",
            &groups,
            &[("worker / ONNX Runtime, embeddings/s", "#2b6cb0")],
        ),
    )
    .unwrap();
    println!("table: target/bench-embeddings.md, plot: docs/bench-embeddings.svg");
}
