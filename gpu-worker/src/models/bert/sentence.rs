//! A sentence-embedding classifier: any BERT-layout sentence encoder with mean pooling,
//! plus a linear head stored in `head.safetensors` beside it (the SetFit shape), its labels
//! in that file's metadata.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use candle_nn::{Linear, Module};
use serde::{Deserialize, Serialize};

use super::encoder::BertBody;
use crate::models::model::{Model, ModelInput, Output, rows_output};

/// File holding the linear head of a sentence-embedding classifier.
pub const HEAD_FILE: &str = "head.safetensors";
/// Safetensors metadata key under which the head's [`HeadConfig`] is stored as JSON.
pub const HEAD_METADATA_KEY: &str = "inferencehub.head";

/// Settings of a sentence-embedding classification head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Labels in the order of the head's rows.
    pub labels: Vec<String>,
    /// L2-normalise the pooled embedding before the head (sentence-transformers models
    /// with a `Normalize` module).
    #[serde(default)]
    pub normalize: bool,
    /// Token limit; capped at the body's `max_position_embeddings`.
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

/// Sentence encoder + mean pooling + linear head.
pub struct SentenceClassifier {
    body: BertBody,
    head: Linear,
    normalize: bool,
}

impl SentenceClassifier {
    /// The classifier of `body` and `head`; `normalize` L2-normalises the pooled embedding
    /// before the head.
    pub fn new(body: BertBody, head: Linear, normalize: bool) -> Self {
        Self {
            body,
            head,
            normalize,
        }
    }
}

impl Model for SentenceClassifier {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let embedding = self.body.embed(inputs, self.normalize)?;
        let logits = self.head.forward(&embedding)?;
        Ok(rows_output(
            candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?,
        ))
    }
}

/// Reads `head.safetensors`: its `weight` `[labels, hidden]`, `bias` `[labels]` and the
/// [`HeadConfig`] in its metadata.
pub fn read_head(path: &Path, device: &Device) -> anyhow::Result<(Linear, HeadConfig)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let config_json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(HEAD_METADATA_KEY))
        .with_context(|| format!("{} has no {HEAD_METADATA_KEY} metadata", path.display()))?;
    let config: HeadConfig = serde_json::from_str(config_json)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    let (Some(weight), Some(bias)) = (tensors.get("weight"), tensors.get("bias")) else {
        bail!("{} must hold `weight` and `bias`", path.display());
    };
    let weight = weight.to_dtype(DType::F32)?;
    let bias = bias.to_dtype(DType::F32)?;
    if weight.dims2()?.0 != config.labels.len() || bias.dims1()? != config.labels.len() {
        bail!(
            "head has {} rows but names {} labels",
            weight.dim(0)?,
            config.labels.len()
        );
    }
    Ok((Linear::new(weight, Some(bias)), config))
}
