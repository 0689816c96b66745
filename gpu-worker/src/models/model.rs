//! What every model family implements: a synchronous forward pass over a batch of prepared
//! inputs ([`Model`]), owned by one thread (see `batching`) and never touched by async
//! code; and what a loaded model is ([`LoadedModel`]): its `ListModels` entry, its forward
//! pass and, for text models, the tokenizer that prepares its inputs.

use std::sync::Arc;

use anyhow::bail;
use candle_core::{DType, Device};
use inferencehub_proto::InputSignature;
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, TensorInfo};
use tokenizers::Tokenizer;

/// One input, ready for a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// Token ids of a text input, special tokens included, already truncated.
    Tokens(Vec<u32>),
    /// Raw (unnormalised) features of a tabular input.
    Features(Vec<f32>),
}

/// The features of every input as one row-major `[inputs, feature_count]` matrix,
/// refusing tokens and rows of another width.
pub fn feature_matrix(inputs: &[ModelInput], feature_count: usize) -> anyhow::Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(inputs.len() * feature_count);
    for input in inputs {
        match input {
            ModelInput::Features(f) if f.len() == feature_count => flat.extend_from_slice(f),
            ModelInput::Features(f) => {
                bail!("expected {feature_count} features, got {}", f.len())
            }
            ModelInput::Tokens(_) => bail!("a tabular model was given tokens"),
        }
    }
    Ok(flat)
}

/// The token ids of every input, refusing anything else.
pub fn token_rows(inputs: &[ModelInput]) -> anyhow::Result<Vec<&[u32]>> {
    inputs
        .iter()
        .map(|input| match input {
            ModelInput::Tokens(ids) if !ids.is_empty() => Ok(ids.as_slice()),
            ModelInput::Tokens(_) => bail!("empty token sequence"),
            ModelInput::Features(_) => bail!("a text model was given features"),
        })
        .collect()
}

/// A model that maps a batch of inputs to one output row per input: the probability of
/// every label for a classifier, the predicted values for a regressor (the model's
/// [`ModelTask`]). Implementations run synchronously on a thread of their own.
pub trait Model: Send {
    /// One output row for every input, in input order.
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// Options that apply to every model a worker loads.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where tensors live.
    pub device: Device,
    /// What text encoders compute in (tabular and ONNX models always use f32).
    pub dtype: DType,
    /// Largest prompt accepted by text models, in bytes.
    pub max_prompt_bytes: usize,
}

/// A model read from disk.
pub struct LoadedModel {
    /// What it is and accepts: its `ListModels` entry.
    pub info: ModelInfo,
    /// Its forward pass.
    pub model: Box<dyn Model>,
    /// Text models only: truncating, non-padding tokenizer.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

impl LoadedModel {
    /// Turns a validated raw input into a [`ModelInput`]. Tokenisation is CPU work: call
    /// it off the async runtime.
    pub fn prepare(&self, prompt: &str, features: &[f32]) -> anyhow::Result<ModelInput> {
        prepare_input(self.tokenizer.as_deref(), prompt, features)
    }

    /// Runs one forward pass with a typical input so the first request pays no one-off
    /// costs (allocations, kernel selection); also proves the weights produce finite output.
    pub fn warm_up(&mut self) -> anyhow::Result<()> {
        let input = match self.info.kind() {
            ModelKind::Tabular => ModelInput::Features(vec![0.0; self.info.feature_count as usize]),
            _ => self.prepare("warm-up pass", &[])?,
        };
        let out = self.model.forward(&[input])?;
        let ok = out.len() == 1
            && out[0].len() == output_width(&self.info)
            && out[0].iter().all(|p| p.is_finite());
        if !ok {
            bail!("warm-up pass of {} gave unusable output", self.info.name);
        }
        Ok(())
    }
}

/// See [`LoadedModel::prepare`].
pub fn prepare_input(
    tokenizer: Option<&Tokenizer>,
    prompt: &str,
    features: &[f32],
) -> anyhow::Result<ModelInput> {
    match tokenizer {
        Some(tokenizer) => {
            let encoding = tokenizer
                .encode(prompt, true)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
            Ok(ModelInput::Tokens(encoding.get_ids().to_vec()))
        }
        None => Ok(ModelInput::Features(features.to_vec())),
    }
}

/// Width of every output row: one per label, or one per value.
pub fn output_width(info: &ModelInfo) -> usize {
    match info.task() {
        ModelTask::Regression => info.value_count as usize,
        _ => info.labels.len(),
    }
}

/// The checks every input for this model must pass.
pub fn signature(info: &ModelInfo) -> InputSignature {
    InputSignature::from_info(info).unwrap_or(InputSignature::Text {
        max_prompt_bytes: info.max_prompt_bytes as usize,
    })
}

/// The `ListModels` entry of a text classifier.
pub fn text_info(
    name: &str,
    version: String,
    labels: Vec<String>,
    max_tokens: usize,
    opts: &LoadOptions,
    architecture: &str,
) -> ModelInfo {
    ModelInfo {
        name: name.to_string(),
        version,
        kind: ModelKind::Text as i32,
        labels,
        max_tokens: max_tokens as u32,
        max_prompt_bytes: opts.max_prompt_bytes as u32,
        architecture: architecture.to_string(),
        task: ModelTask::Classification as i32,
        input: Some(TensorInfo {
            name: "prompt".into(),
            datatype: "BYTES".into(),
            shape: vec![-1],
        }),
        ..Default::default()
    }
}

/// The input description of a tabular model: rows of `features` floats.
pub fn features_input(name: &str, features: usize) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![-1, features as i64],
    }
}

/// Index and value of the largest probability.
pub fn argmax(probabilities: &[f32]) -> (usize, f32) {
    probabilities
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
            if p > best.1 { (i, p) } else { best }
        })
}
