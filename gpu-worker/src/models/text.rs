//! Text classifiers from Hugging Face checkpoints, loaded unchanged: a transformers
//! `*ForSequenceClassification` folder (BERT-layout encoders on [`super::bert`], ModernBERT
//! on [`super::modernbert`]), or a sentence encoder with a linear head beside it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::bert::classifier::sequence_classifier;
use super::bert::encoder::{load_body, read_weights};
pub use super::bert::sentence::HEAD_FILE;
use super::bert::sentence::{SentenceClassifier, read_head};
use super::hf_config::{ExtraConfig, architecture_of, family, label_count, labels_from_id2label};
use super::model::{LoadOptions, LoadedModel, Model, text_info};
use super::modernbert::ModernBertClassifier;
use super::tokens::load_tokenizer;

/// Loads a transformers `*ForSequenceClassification` model folder (see [`ARCHITECTURES`]).
pub fn load_sequence_classifier(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let extra: ExtraConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let arch = architecture_of(&extra)?;
    let (classifier, labels, max_tokens): (Box<dyn Model>, _, _) =
        if arch == "ModernBertForSequenceClassification" {
            let tensors = read_weights(dir, &opts.device)?;
            let num_labels = label_count(&tensors, "classifier")?;
            let labels = labels_from_id2label(extra.id2label, num_labels)?;
            let (model, max_tokens) =
                ModernBertClassifier::load(&text, tensors, &labels, &opts.device)?;
            (Box::new(model), labels, max_tokens)
        } else {
            let (classifier, labels, config) = sequence_classifier(dir, &opts.device, opts.dtype)?;
            (Box::new(classifier), labels, config.max_position_embeddings)
        };
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    let architecture = family(arch);
    Ok(LoadedModel {
        info: text_info(
            name,
            version,
            labels,
            max_tokens,
            opts,
            &format!("{architecture}-sequence-classification"),
        ),
        model: classifier,
        tokenizer: Some(Arc::new(tokenizer)),
    })
}

/// Loads a sentence-embedding classifier folder (body files + `head.safetensors`).
pub fn load_sentence_classifier(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let (body, config) = load_body(dir, &opts.device, opts.dtype)?;
    let (head, head_config) = read_head(&dir.join(HEAD_FILE), &opts.device)?;
    if head.weight().dim(1)? != config.hidden_size {
        bail!(
            "head expects {} inputs but the body's hidden size is {}",
            head.weight().dim(1)?,
            config.hidden_size
        );
    }
    let max_tokens = head_config
        .max_tokens
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    Ok(LoadedModel {
        info: text_info(
            name,
            version,
            head_config.labels.clone(),
            max_tokens,
            opts,
            "sentence-embedding-mean-pooling+linear",
        ),
        model: Box::new(SentenceClassifier::new(body, head, head_config.normalize)),
        tokenizer: Some(Arc::new(tokenizer)),
    })
}
