//! Sentence-embedding models in the sentence-transformers layout (written by
//! `tools/python/make_embedding_fixtures.py`): tiny random BERT encoders with mean (and
//! normalised), CLS and max pooling, RoBERTa and ModernBERT encoders, and the mean-pooled BERT exported to
//! ONNX. Each must give transformers' own token states pooled as sentence-transformers
//! pools them, alone and in padded batches, in process and over mutual-TLS gRPC; prompts
//! longer than the window are cut and say so, or are refused when the caller asks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Worker, cpu_options, linked};
use inferencehub_proto::pb::{ModelTask, PredictBatchRequest};
use inferencehub_worker::models::{ModelInput, load_model};
use serde::Deserialize;
use tonic::Code;

#[derive(Deserialize)]
struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct Expected {
    pooling: String,
    normalize: bool,
    cases: Vec<Case>,
}

const FIXTURES: [&str; 6] = [
    "bert-mean",
    "bert-cls",
    "bert-max",
    "roberta-mean",
    "modernbert-mean",
    "bert-mean-onnx",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings")
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixtures_dir().join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn worst(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        // A NaN is the worst error (`f64::max` would skip it).
        .map(|e| if e.is_nan() { f64::INFINITY } else { e })
        .fold(0.0, f64::max)
}

#[test]
fn every_pooling_mode_matches_transformers_pooled_as_sentence_transformers_does() {
    for name in FIXTURES {
        let want = expected(name);
        let mut model = load_model(&fixtures_dir().join(name), name, &cpu_options())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(model.info.task(), ModelTask::Embedding, "{name}");
        assert_eq!(model.info.value_count, 16, "{name}: the dimension");
        assert!(
            model
                .info
                .architecture
                .contains(&format!("-embedding-{}", want.pooling)),
            "{name}: {}",
            model.info.architecture
        );
        let inputs: Vec<ModelInput> = want
            .cases
            .iter()
            .map(|c| {
                let input = model.prepare(&c.prompt, &[]).unwrap();
                assert_eq!(input, ModelInput::Tokens(c.input_ids.clone()), "{name}");
                input
            })
            .collect();
        // Prompts of several lengths in one batch, and each alone.
        let batch = model.model.forward(&inputs).unwrap();
        for (i, case) in want.cases.iter().enumerate() {
            let alone = model.model.forward(&inputs[i..=i]).unwrap().remove(0).row;
            for (got, how) in [(&alone, "alone"), (&batch[i].row, "in a batch")] {
                let w = worst(got, &case.embedding);
                assert!(w < 1e-4, "{name} {how} {:?}: off by {w:e}", case.prompt);
            }
            if want.normalize {
                let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
            }
        }
    }
}

#[test]
fn a_folder_with_a_module_the_worker_does_not_serve_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures_dir().join("bert-cls");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let target = dir.path().join(path.file_name().unwrap());
        if path.is_dir() {
            std::os::unix::fs::symlink(&path, &target).unwrap();
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
    let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
        {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#;
    std::fs::write(dir.path().join("modules.json"), modules).unwrap();
    let e = load_model(dir.path(), "dense", &cpu_options())
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("Dense"), "{e:#}");
}

#[tokio::test]
async fn embeddings_are_served_over_grpc_with_token_counts_and_truncation() {
    let models = linked(&fixtures_dir(), &["bert-mean", "bert-mean-onnx"]);
    let worker = Worker::serving(models.path(), &["--max-wait", "2ms"]).await;
    let mut client = worker.client().await;
    let listed = common::models(&mut client).await;
    assert!(
        listed
            .iter()
            .all(|m| m.task() == ModelTask::Embedding && m.value_count == 16)
    );
    let window = listed[0].max_tokens as usize;
    assert_eq!(window, 48, "sentence_bert_config.json's max_seq_length");

    let want = expected("bert-mean");
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    for name in ["bert-mean", "bert-mean-onnx"] {
        let mut prompts: Vec<String> = want.cases.iter().map(|c| c.prompt.clone()).collect();
        prompts.push(long.clone());
        let answer = client
            .predict_batch(PredictBatchRequest {
                model_name: name.into(),
                prompts: prompts.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for (result, case) in answer.results.iter().zip(&want.cases) {
            assert!(worst(&result.values, &case.embedding) < 1e-4, "{name}");
            assert_eq!(result.tokens as usize, case.input_ids.len());
            assert!(!result.truncated);
            assert!(result.label.is_empty() && result.scores.is_empty());
        }
        let cut = answer.results.last().unwrap();
        assert!(cut.truncated, "{name}: the long prompt was cut");
        assert_eq!(cut.tokens as usize, window);

        // Refused instead when asked, naming the prompt.
        let status = client
            .predict_batch(PredictBatchRequest {
                model_name: name.into(),
                prompts,
                refuse_truncation: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields = inferencehub_proto::field_errors(&status);
        assert_eq!(fields[0].field, format!("prompts[{}]", want.cases.len()));
    }
}
