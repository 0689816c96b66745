//! What every model family implements: a synchronous forward pass over a batch of prepared
//! inputs ([`Model`]), owned by one thread (see `batching`) and never touched by async
//! code; and what a loaded model is ([`LoadedModel`]): its `ListModels` entry, its forward
//! pass and, for text models, the tokenizer that prepares its inputs.

use std::sync::Arc;

use super::tokens::PromptTokenizer;
use anyhow::bail;
use candle_core::{DType, Device};
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, Tensor, TensorInfo};
use inferencehub_proto::{DataType, InputSignature, tensor};

/// One input, ready for a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// Token ids of a text input, special tokens included, already truncated.
    Tokens(Vec<u32>),
    /// Raw (unnormalised) features of a tabular input.
    Features(Vec<f32>),
    /// One tensor per input of the model's signature (`ModelInfo.inputs`), in its order,
    /// each of shape `[1, ...]`; checked against the signature.
    Tensors(Vec<Tensor>),
}

impl ModelInput {
    /// Whether this input may share a forward pass with `other`: tensors only with tensors
    /// of the same shapes (a dynamic axis of one size per pass); token sequences of any
    /// length are padded, features are one width.
    pub fn batches_with(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tensors(a), Self::Tensors(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.shape == b.shape)
            }
            (Self::Tensors(_), _) | (_, Self::Tensors(_)) => false,
            _ => true,
        }
    }
}

/// What a forward pass gives for one input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// The probability of every label (classifier) or the predicted values (regressor).
    pub row: Vec<f32>,
    /// The model's named outputs (`ModelInfo.outputs`) for this input, each of shape
    /// `[1, ...]`; empty for models without any.
    pub tensors: Vec<Tensor>,
}

impl From<Vec<f32>> for Output {
    fn from(row: Vec<f32>) -> Self {
        Self {
            row,
            tensors: Vec::new(),
        }
    }
}

/// Rows as outputs without named tensors.
pub fn rows_output(rows: Vec<Vec<f32>>) -> Vec<Output> {
    rows.into_iter().map(Output::from).collect()
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
            ModelInput::Tensors(t) => match t.as_slice() {
                [t] if t.datatype == "FP32" && t.raw_contents.len() == feature_count * 4 => flat
                    .extend(
                        t.raw_contents
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    ),
                _ => bail!("expected one FP32 tensor of {feature_count} features"),
            },
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
            ModelInput::Features(_) | ModelInput::Tensors(_) => {
                bail!("a text model was given features")
            }
        })
        .collect()
}

/// A model that maps a batch of inputs to one [`Output`] per input: the probability of
/// every label for a classifier, the predicted values for a regressor (the model's
/// [`ModelTask`]), and its named outputs. Implementations run synchronously on a thread
/// of their own.
pub trait Model: Send {
    /// One output for every input, in input order.
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>>;
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
    pub tokenizer: Option<Arc<PromptTokenizer>>,
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
            ModelKind::Tabular if self.info.feature_count == 0 => {
                ModelInput::Tensors(zero_inputs(&self.info.inputs, 1))
            }
            ModelKind::Tabular => ModelInput::Features(vec![0.0; self.info.feature_count as usize]),
            _ => self.prepare("warm-up pass", &[])?,
        };
        let out = self.model.forward(&[input])?;
        let ok = out.len() == 1
            && out[0].row.len() == output_width(&self.info)
            && out[0].row.iter().all(|p| p.is_finite());
        if !ok {
            bail!("warm-up pass of {} gave unusable output", self.info.name);
        }
        Ok(())
    }
}

/// See [`LoadedModel::prepare`].
pub fn prepare_input(
    tokenizer: Option<&PromptTokenizer>,
    prompt: &str,
    features: &[f32],
) -> anyhow::Result<ModelInput> {
    match tokenizer {
        Some(tokenizer) => Ok(ModelInput::Tokens(tokenizer.tokenize(prompt)?.0)),
        None => Ok(ModelInput::Features(features.to_vec())),
    }
}

/// A batch of `n` inputs of zeros (empty strings) for the inputs `specs` declares, dynamic
/// axes of size 1: the input of a model's first runs.
pub fn zero_inputs(specs: &[TensorInfo], n: usize) -> Vec<Tensor> {
    specs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = std::iter::once(n as i64)
                .chain(spec.shape.iter().skip(1).map(|&d| d.max(1)))
                .collect();
            let count = tensor::element_count(&shape).unwrap_or(0);
            let width = DataType::parse(&spec.datatype).and_then(DataType::width);
            let (raw, bytes) = match width {
                Some(w) => (vec![0; count * w], Vec::new()),
                None => (Vec::new(), vec![Vec::new(); count]),
            };
            Tensor {
                name: spec.name.clone(),
                datatype: spec.datatype.clone(),
                shape,
                raw_contents: raw,
                bytes_contents: bytes,
            }
        })
        .collect()
}

/// Width of every output row: one per label, or one per value (an embedding's dimension).
pub fn output_width(info: &ModelInfo) -> usize {
    match info.task() {
        ModelTask::Regression | ModelTask::Embedding => info.value_count as usize,
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
        input: Some(prompt_input()),
        inputs: vec![prompt_input()],
        ..Default::default()
    }
}

/// The input of a text model: one text per input.
pub fn prompt_input() -> TensorInfo {
    TensorInfo {
        name: "prompt".into(),
        datatype: "BYTES".into(),
        shape: vec![-1],
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
