//! `make bench-onnx-text`: a transformer exported to ONNX against the worker's own encoder on
//! the same weights, interleaved in one run. MiniLM-L6 (the demo encoder) as a
//! `BertForSequenceClassification` with a fixed 2-label head, written as a Hugging Face
//! checkpoint and as a `torch.onnx.export` of it (`tools/python/export_text_classifier.py`).
//!
//! 1. Both folders load as the worker loads them and must give the same probabilities
//!    within 1e-4 for the demo set's sentences before anything is timed.
//! 2. In process, sentences/s at batch 1, 8 and 32 of short sentences and batch 8 of 128
//!    tokens: the export on ONNX Runtime (the worker's ONNX text model) and the checkpoint on
//!    the worker's own encoder, best of three interleaved rounds each.
//! 3. The export over mutual-TLS gRPC (the release worker binary, one prompt per call) at 1
//!    and 32 callers, against the same model in process at batch 1 and 32: the worker's
//!    overhead as a ratio.
//!
//! Writes the tables to `target/bench-onnx-text.md` and a plot to `docs/bench-onnx-text.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use common::{WorkerProcess, forward_seconds, load_cpu, one_and_many, ratio_svg, root};
use inferencehub_bench::load::Input;
use inferencehub_worker::models::{LoadedModel, ModelInput};

struct Row {
    label: String,
    onnx: f64,
    own: f64,
}

#[tokio::main]
async fn main() {
    let dir = root().join(".cache/bench-text");
    let mut onnx = load_cpu(&dir.join("onnx"), "minilm-onnx", "bench-onnx-text");
    let mut own = load_cpu(&dir.join("hf"), "minilm-hf", "bench-onnx-text");
    println!(
        "export: {}; checkpoint: {}",
        onnx.info.architecture, own.info.architecture
    );

    let sentences = inferencehub_devkit::demo_sentences();
    let prepare = |model: &LoadedModel, s: &str| model.prepare(s, &[]).unwrap();
    let short: Vec<ModelInput> = sentences
        .iter()
        .map(|s| prepare(&onnx, s))
        .filter(|i| matches!(i, ModelInput::Tokens(ids) if (10..=25).contains(&ids.len())))
        .take(32)
        .collect();
    let long: Vec<ModelInput> = (0..8)
        .map(|i| {
            let joined: Vec<&str> = sentences
                .iter()
                .cycle()
                .skip(i * 7)
                .take(20)
                .map(String::as_str)
                .collect();
            // The first 128 tokens of 20 sentences.
            match prepare(&onnx, &joined.join(" ")) {
                ModelInput::Tokens(ids) => ModelInput::Tokens(ids[..128].to_vec()),
                other => panic!("a text model gave {other:?}"),
            }
        })
        .collect();
    assert_eq!(short.len(), 32);

    // 1. Same answers first.
    let a = onnx
        .model
        .forward(&short)
        .unwrap()
        .into_iter()
        .map(|o| o.row)
        .collect::<Vec<_>>();
    let b = own
        .model
        .forward(&short)
        .unwrap()
        .into_iter()
        .map(|o| o.row)
        .collect::<Vec<_>>();
    let worst = inferencehub_devkit::largest_error(
        a.iter()
            .zip(&b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())),
    );
    assert!(
        worst < 1e-4,
        "the export and the checkpoint disagree by {worst}"
    );
    println!("probabilities agree within {worst:.1e}");

    // 2. In process, interleaved.
    let cells: Vec<(String, Vec<ModelInput>)> = vec![
        ("batch 1, short".into(), short[..1].to_vec()),
        ("batch 8, short".into(), short[..8].to_vec()),
        ("batch 32, short".into(), short.clone()),
        ("batch 8, 128 tokens".into(), long.clone()),
    ];
    let mut rows = Vec::new();
    for (label, inputs) in &cells {
        let (mut o, mut w) = (f64::MAX, f64::MAX);
        for round in 0..3 {
            o = o.min(forward_seconds(&mut onnx, inputs));
            w = w.min(forward_seconds(&mut own, inputs));
            eprintln!("  {label}: round {} of 3", round + 1);
        }
        let n = inputs.len() as f64;
        rows.push(Row {
            label: label.clone(),
            onnx: n / o,
            own: n / w,
        });
    }
    let mut md = String::new();
    writeln!(
        md,
        "| cell | export on ONNX Runtime (sentences/s) | checkpoint on the worker's encoder | ONNX Runtime / own |\n|---|---:|---:|---:|"
    )
    .unwrap();
    for r in &rows {
        writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.2}x |",
            r.label,
            r.onnx,
            r.own,
            r.onnx / r.own
        )
        .unwrap();
    }

    // 3. The export over gRPC.
    eprintln!("gRPC: the release worker binary, 1 caller, then 32");
    let (process, target) =
        WorkerProcess::serve_one(&dir.join("onnx"), "m", &Input::Text("warm up".into())).await;
    let short_texts: Vec<Input> = sentences
        .iter()
        .filter(|s| matches!(prepare(&onnx, s), ModelInput::Tokens(ids) if (10..=25).contains(&ids.len())))
        .take(32)
        .map(|s| Input::Text(s.clone()))
        .collect();
    let (one, many) = one_and_many(Arc::new(target), "m", &short_texts, 40, (100, 640)).await;
    let batch = many.mean_batch.unwrap_or(0.0);
    drop(process);
    let alone1 = 1.0 / forward_seconds(&mut onnx, &short[..1]);
    let alone32 = 32.0 / forward_seconds(&mut onnx, &short);
    writeln!(
        md,
        "\nThe export over mutual-TLS gRPC (release worker binary, one prompt per call):\n\n\
         | load | predictions/s | in process | predictions/s | gRPC / in process |\n\
         |---|---:|---|---:|---:|\n\
         | 1 caller | {:.1} | batch 1 | {alone1:.1} | {:.2}x |\n\
         | 32 callers (mean batch {batch:.1}) | {:.1} | batch 32 | {alone32:.1} | {:.2}x |",
        one.rps,
        one.rps / alone1,
        many.rps,
        many.rps / alone32
    )
    .unwrap();
    print!("\n{md}");
    std::fs::write(root().join("target/bench-onnx-text.md"), &md).unwrap();
    let groups: Vec<(String, Vec<f64>)> = rows
        .iter()
        .map(|r| (r.label.clone(), vec![r.onnx / r.own]))
        .collect();
    std::fs::write(
        root().join("docs/bench-onnx-text.svg"),
        ratio_svg(
            "MiniLM-L6 classifier: the ONNX export on ONNX Runtime relative to the worker's own encoder (same weights, same run)",
            &groups,
            &[("ONNX Runtime / worker's encoder, sentences/s", "#2b6cb0")],
        ),
    )
    .unwrap();
    println!("table: target/bench-onnx-text.md, plot: docs/bench-onnx-text.svg");
}
