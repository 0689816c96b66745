//! A transformer exported to ONNX and served from text: a tiny random
//! `BertForSequenceClassification` exported by `torch.onnx.export`, and its int8 copy from
//! ONNX Runtime's `quantize_dynamic` (`tools/python/make_onnx_text_fixtures.py`), loaded as
//! the worker loads folders and checked against the logits transformers (fp32) and ONNX
//! Runtime's Python build (int8) computed for the same prompts; then served over mutual-TLS
//! gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::Worker;
use inferencehub_proto::pb::{ModelKind, PredictRequest};
use inferencehub_worker::models::{LoadOptions, ModelInput, argmax, load_model};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-text")
}

fn fixture(name: &str) -> (PathBuf, Expected) {
    let dir = fixtures().join(name);
    let expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn options() -> LoadOptions {
    LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        max_prompt_bytes: 4096,
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Worst difference between two rows of probabilities.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads the folder, tokenises every prompt with its own tokenizer, compares each prompt
/// alone within `alone`, and all of them as one batch (length buckets, padding) within
/// `batched`, with the same labels.
fn check(name: &str, alone: f32, batched: f32) {
    let (dir, expected) = fixture(name);
    let mut model = load_model(&dir, name, &options()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(model.info.kind(), ModelKind::Text);
    assert_eq!(model.info.labels, ["negative", "neutral", "positive"]);
    assert_eq!(
        model.info.architecture,
        "onnxruntime-bert-sequence-classification"
    );
    let mut inputs = Vec::new();
    for case in &expected.cases {
        let input = model.prepare(&case.prompt, &[]).unwrap();
        assert_eq!(
            input,
            ModelInput::Tokens(case.input_ids.clone()),
            "{name}: {:?}",
            case.prompt
        );
        inputs.push(input);
    }
    let all = model.model.forward(&inputs).unwrap();
    for (i, case) in expected.cases.iter().enumerate() {
        let want = softmax(&case.logits);
        let one = model.model.forward(&inputs[i..=i]).unwrap().remove(0);
        let d = worst(&one, &want);
        assert!(d <= alone, "{name} {:?} alone: {d:e}", case.prompt);
        let d = worst(&all[i], &want);
        assert!(d <= batched, "{name} {:?} in a batch: {d:e}", case.prompt);
        assert_eq!(argmax(&one).0, argmax(&want).0, "{name} {:?}", case.prompt);
    }
}

#[test]
fn a_pytorch_export_answers_text_like_transformers() {
    check("bert-onnx", 1e-5, 1e-5);
}

/// Dynamic quantisation scales each activation by the range of the whole tensor, so an
/// input in a padded batch is quantised differently than alone (ONNX Runtime from Python
/// does the same with the same batch): ONNX Runtime's own answer for one prompt is matched
/// to 1e-5; in a batch within 5e-2, the size of the quantiser's own error here (the
/// quantised logits differ from transformers' fp32 ones by up to 0.07).
#[test]
fn its_int8_copy_answers_like_onnx_runtime_does() {
    check("bert-onnx-int8", 1e-5, 5e-2);
}

#[test]
fn a_text_folder_whose_graph_does_not_take_token_ids_is_refused_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("confused");
    std::fs::create_dir(&model).unwrap();
    let tabular = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/sklearn-random-forest/model.onnx");
    std::fs::copy(tabular, model.join("model.onnx")).unwrap();
    for file in ["tokenizer.json", "config.json"] {
        std::fs::copy(fixtures().join("bert-onnx").join(file), model.join(file)).unwrap();
    }
    let err = match load_model(&model, "confused", &options()) {
        Ok(_) => panic!("a float [batch, 13] graph cannot take token ids"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("confused") && err.contains("int64 or int32 [batch, sequence]"),
        "{err}"
    );
}

#[tokio::test]
async fn the_export_is_served_over_grpc_from_a_prompt() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixtures().join("bert-onnx"), models.path().join("bert")).unwrap();
    let worker = Worker::serving(models.path(), &["--max-wait", "1ms"]).await;
    let mut client = worker.client().await;
    let (_, expected) = fixture("bert-onnx");
    for case in &expected.cases {
        let answer = client
            .predict(PredictRequest {
                model_name: "bert".into(),
                prompt: case.prompt.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want = softmax(&case.logits);
        let (best, p) = argmax(&want);
        assert_eq!(answer.label, ["negative", "neutral", "positive"][best]);
        assert!((answer.probability - p).abs() <= 1e-5, "{answer:?} vs {p}");
    }
}
