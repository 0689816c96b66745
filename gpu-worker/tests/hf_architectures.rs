//! Hugging Face text classifiers beyond BERT, loaded unchanged: tiny, randomly initialised
//! DistilBERT, RoBERTa, XLM-RoBERTa and ModernBERT checkpoints written by transformers
//! itself (`tools/python/make_hf_fixtures.py`), checked against the logits transformers
//! computed for the same prompts (an independent implementation: PyTorch).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use inferencehub_worker::models::bert::classifier::sequence_classifier;
use inferencehub_worker::models::{LoadOptions, ModelInput, load_model};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Expected {
    architecture: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> (PathBuf, Expected) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Loads the folder as the worker does, tokenises every prompt with its own tokenizer, and
/// compares probabilities one by one and as one padded batch.
fn check_served(name: &str, architecture: &str) {
    let (dir, expected) = fixture(name);
    assert_eq!(expected.architecture, architecture);
    let mut model = load_model(
        &dir,
        name,
        &LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: candle_core::DType::F32,
            max_prompt_bytes: 4096,
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(model.info.labels, ["negative", "neutral", "positive"]);
    let mut inputs = Vec::new();
    for case in &expected.cases {
        let input = model.prepare(&case.prompt, &[]).unwrap();
        assert_eq!(
            input,
            ModelInput::Tokens(case.input_ids.clone()),
            "{name}: token ids of {:?}",
            case.prompt
        );
        inputs.push(input);
    }
    // Prompts of different lengths in one batch: padding must not leak into the answer.
    let batch = model.model.forward(&inputs).unwrap();
    for (i, case) in expected.cases.iter().enumerate() {
        let alone = model.model.forward(&inputs[i..=i]).unwrap();
        let want = softmax(&case.logits);
        for (got, label) in [(&alone[0], "alone"), (&batch[i], "in a batch")] {
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < TOLERANCE,
                    "{name} {label}: {:?} gave {got:?}, transformers {want:?}",
                    case.prompt
                );
            }
        }
    }
}

/// The BERT-layout architectures also expose their logits: compare those directly.
fn check_logits(name: &str) {
    let (dir, expected) = fixture(name);
    let (classifier, _, _) =
        sequence_classifier(&dir, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let inputs: Vec<ModelInput> = expected
        .cases
        .iter()
        .map(|c| ModelInput::Tokens(c.input_ids.clone()))
        .collect();
    let logits = classifier.logits(&inputs).unwrap();
    for (got, case) in logits.iter().zip(&expected.cases) {
        for (g, w) in got.iter().zip(&case.logits) {
            assert!(
                (g - w).abs() < TOLERANCE,
                "{name}: logits of {:?}: {got:?} vs transformers {:?}",
                case.prompt,
                case.logits
            );
        }
    }
}

#[test]
fn distilbert_matches_transformers() {
    check_served("distilbert", "DistilBertForSequenceClassification");
    check_logits("distilbert");
}

#[test]
fn roberta_matches_transformers() {
    check_served("roberta", "RobertaForSequenceClassification");
    check_logits("roberta");
}

#[test]
fn xlm_roberta_matches_transformers() {
    check_served("xlm-roberta", "XLMRobertaForSequenceClassification");
    check_logits("xlm-roberta");
}

#[test]
fn modernbert_matches_transformers() {
    check_served("modernbert", "ModernBertForSequenceClassification");
}
