//! Models behind one small synchronous trait. A [`Classifier`] runs a forward pass over a
//! batch of prepared inputs; it is owned by one thread (see `batching`) and never touched
//! by async code. Loading reads one model folder and decides which architecture it holds.

pub mod cpu_bert;
pub mod device;
pub mod hf;
pub mod onnx;
pub mod onnx_ml;
pub mod tabular;
pub mod tensor_bert;
pub mod text;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, TensorInfo};
use inferencehub_proto::signature::InputSignature;
use sha2::{Digest, Sha256};
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

/// A model that maps a batch of inputs to one output row per input: the probability of
/// every label for a classifier, the predicted values for a regressor (see
/// [`ModelSpec::task`]). Implementations run synchronously on a thread of their own.
pub trait Classifier: Send {
    /// One output row for every input, in input order.
    fn classify(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// What a loaded model is and accepts; advertised through `ListModels`.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Folder name under the model directory.
    pub name: String,
    /// Short digest of the model's files.
    pub version: String,
    /// Text or tabular.
    pub kind: ModelKind,
    /// Labels in output order.
    pub labels: Vec<String>,
    /// Tabular: number of features.
    pub feature_count: usize,
    /// Text: token limit inputs are truncated at.
    pub max_tokens: usize,
    /// Text: largest prompt accepted, in bytes.
    pub max_prompt_bytes: usize,
    /// Architecture name, for humans.
    pub architecture: String,
    /// Classification (labels and probabilities) or regression (values).
    pub task: ModelTask,
    /// The input tensor as the model declares it.
    pub input: TensorInfo,
    /// Regression: values per answer.
    pub value_count: usize,
    /// Tabular: feature names, where known.
    pub feature_names: Vec<String>,
}

impl ModelSpec {
    /// The `ListModels` entry.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind as i32,
            labels: self.labels.clone(),
            feature_count: self.feature_count as u32,
            max_tokens: self.max_tokens as u32,
            max_prompt_bytes: self.max_prompt_bytes as u32,
            architecture: self.architecture.clone(),
            task: self.task as i32,
            input: Some(self.input.clone()),
            value_count: self.value_count as u32,
            feature_names: self.feature_names.clone(),
        }
    }

    /// Width of every output row: one per label, or one per value.
    pub fn output_width(&self) -> usize {
        match self.task {
            ModelTask::Regression => self.value_count,
            _ => self.labels.len(),
        }
    }

    /// The input description of a text model: a batch of strings.
    pub fn text_input() -> TensorInfo {
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

    /// The checks every input for this model must pass.
    pub fn signature(&self) -> InputSignature {
        match self.kind {
            ModelKind::Tabular => InputSignature::Tabular {
                feature_count: self.feature_count,
            },
            _ => InputSignature::Text {
                max_prompt_bytes: self.max_prompt_bytes,
            },
        }
    }
}

/// A model read from disk: its description, its forward pass, and (for text models) the
/// tokenizer that prepares its inputs.
pub struct LoadedModel {
    /// What it is.
    pub spec: ModelSpec,
    /// Its forward pass.
    pub classifier: Box<dyn Classifier>,
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
        let input = match self.spec.kind {
            ModelKind::Tabular => ModelInput::Features(vec![0.0; self.spec.feature_count]),
            _ => self.prepare("warm-up pass", &[])?,
        };
        let out = self.classifier.classify(&[input])?;
        let ok = out.len() == 1
            && out[0].len() == self.spec.output_width()
            && out[0].iter().all(|p| p.is_finite());
        if !ok {
            bail!("warm-up pass of {} gave unusable output", self.spec.name);
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

/// Loads one model folder. The layout decides the architecture:
/// `model.onnx` -> ONNX graph; `tabular.json` -> tabular MLP; `head.safetensors` ->
/// sentence encoder + linear head; otherwise a transformers `*ForSequenceClassification`
/// checkpoint.
pub fn load_model(dir: &Path, name: &str, opts: &LoadOptions) -> anyhow::Result<LoadedModel> {
    let version = version_of(dir)?;
    let loaded = if dir.join(onnx::MODEL_FILE).is_file() {
        onnx::load(dir, name, version, opts)
    } else if dir.join(tabular::CONFIG_FILE).is_file() {
        tabular::load(dir, name, version, opts)
    } else if dir.join(text::HEAD_FILE).is_file() {
        text::load_sentence_classifier(dir, name, version, opts)
    } else if dir.join("config.json").is_file() {
        text::load_sequence_classifier(dir, name, version, opts)
    } else {
        bail!(
            "{} holds no model: expected {}, {}, or config.json + tokenizer.json + \
             model.safetensors",
            dir.display(),
            onnx::MODEL_FILE,
            tabular::CONFIG_FILE
        )
    };
    loaded.with_context(|| format!("loading model {name:?} from {}", dir.display()))
}

/// Loads every subfolder of `root` as a model named after the folder, sorted by name.
pub fn load_model_dir(root: &Path, opts: &LoadOptions) -> anyhow::Result<Vec<LoadedModel>> {
    let mut dirs = Vec::new();
    for entry in
        std::fs::read_dir(root).with_context(|| format!("reading model dir {}", root.display()))?
    {
        let entry = entry?;
        // `Path::is_dir` follows symlinks, so a model folder may link to shared storage.
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                dirs.push((name, entry.path()));
            }
        }
    }
    if dirs.is_empty() {
        bail!("model dir {} has no model folders", root.display());
    }
    dirs.sort();
    dirs.iter()
        .map(|(name, path)| load_model(path, name, opts))
        .collect()
}

/// The model version: the first 12 hex digits of a SHA-256 over the folder's files (names
/// and contents, in name order), so any change to weights, labels or tokenizer shows.
pub fn version_of(dir: &Path) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        let mut file = std::fs::File::open(&path)?;
        std::io::copy(&mut file, &mut hasher)?;
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
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
