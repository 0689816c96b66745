//! Hugging Face text classifiers beyond BERT, loaded unchanged: tiny, randomly initialised
//! DistilBERT, RoBERTa, XLM-RoBERTa and ModernBERT checkpoints written by transformers
//! itself (`tools/python/make_hf_fixtures.py`), checked against the logits transformers
//! computed for the same prompts (an independent implementation: PyTorch).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

mod common;

use common::{check_text_fixture, text_expected};
use inferencehub_worker::models::ModelInput;
use inferencehub_worker::models::bert::classifier::sequence_classifier;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Loads the folder as the worker does, tokenises every prompt with its own tokenizer, and
/// compares probabilities one by one and as one padded batch.
fn check_served(name: &str, architecture: &str) {
    let dir = fixture(name);
    let (_, expected) = check_text_fixture(&dir, name, text_expected(&dir), TOLERANCE, TOLERANCE);
    assert_eq!(expected.architecture, architecture);
}

/// The BERT-layout architectures also expose their logits: compare those directly.
fn check_logits(name: &str) {
    let dir = fixture(name);
    let expected = text_expected(&dir);
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
