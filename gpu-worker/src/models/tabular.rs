//! Tabular classifier: a small MLP with stored input normalisation.
//!
//! Folder layout: `tabular.json` ([`TabularConfig`]) and `model.safetensors` holding
//! `normalizer.mean` and `normalizer.std` (`[features]`) and `layers.{i}.weight`
//! (`[out, in]`) / `layers.{i}.bias` for i = 0.. with ReLU between layers and a softmax
//! over the last layer's outputs.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module};
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask};
use serde::{Deserialize, Serialize};

use super::model::{
    LoadOptions, LoadedModel, Model, ModelInput, Output, feature_matrix, features_input,
    rows_output,
};

/// Name of the file describing a tabular model.
pub const CONFIG_FILE: &str = "tabular.json";

/// Contents of `tabular.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TabularConfig {
    /// Number of features every input has.
    pub feature_count: usize,
    /// Labels in the order of the last layer's outputs.
    pub labels: Vec<String>,
    /// Names of the features, for documentation.
    #[serde(default)]
    pub feature_names: Vec<String>,
}

/// The MLP.
pub struct MlpClassifier {
    mean: Tensor,
    std: Tensor,
    layers: Vec<Linear>,
    device: Device,
    feature_count: usize,
}

impl MlpClassifier {
    /// Builds the model from its tensors (see the module docs for names and shapes).
    pub fn from_tensors(
        tensors: &std::collections::HashMap<String, Tensor>,
        feature_count: usize,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let get = |name: &str| -> anyhow::Result<Tensor> {
            Ok(tensors
                .get(name)
                .with_context(|| format!("missing tensor {name}"))?
                .to_dtype(DType::F32)?
                .to_device(device)?)
        };
        let mean = get("normalizer.mean")?;
        let std = get("normalizer.std")?;
        if mean.dims1()? != feature_count || std.dims1()? != feature_count {
            bail!("normalizer shape does not match feature_count {feature_count}");
        }
        let mut layers = Vec::new();
        let mut width = feature_count;
        while tensors.contains_key(&format!("layers.{}.weight", layers.len())) {
            let i = layers.len();
            let weight = get(&format!("layers.{i}.weight"))?;
            let bias = get(&format!("layers.{i}.bias"))?;
            let (out, inp) = weight.dims2()?;
            if inp != width || bias.dims1()? != out {
                bail!("layers.{i} has shape {out}x{inp}, expected input width {width}");
            }
            width = out;
            layers.push(Linear::new(weight, Some(bias)));
        }
        if layers.is_empty() {
            bail!("model.safetensors has no layers.0.weight");
        }
        Ok(Self {
            mean,
            std,
            layers,
            device: device.clone(),
            feature_count,
        })
    }

    /// Logits `[batch, labels]` for a `[batch, features]` tensor of raw features.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Number of outputs of the last layer.
    pub fn outputs(&self) -> usize {
        self.layers
            .last()
            .and_then(|l| l.weight().dim(0).ok())
            .unwrap_or(0)
    }
}

impl Model for MlpClassifier {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let flat = feature_matrix(inputs, self.feature_count)?;
        let x = Tensor::from_vec(flat, (inputs.len(), self.feature_count), &self.device)?;
        let logits = self.logits(&x)?;
        Ok(rows_output(
            candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?,
        ))
    }
}

/// Loads a tabular model folder.
pub fn load(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let config_path = dir.join(CONFIG_FILE);
    let config: TabularConfig = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    if config.feature_count == 0 {
        bail!("feature_count must be at least 1");
    }
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &opts.device)
        .context("reading model.safetensors")?;
    let mlp = MlpClassifier::from_tensors(&tensors, config.feature_count, &opts.device)?;
    if mlp.outputs() != config.labels.len() {
        bail!(
            "the last layer has {} outputs but {CONFIG_FILE} names {} labels",
            mlp.outputs(),
            config.labels.len()
        );
    }
    Ok(LoadedModel {
        info: ModelInfo {
            name: name.to_string(),
            version,
            kind: ModelKind::Tabular as i32,
            labels: config.labels,
            feature_count: config.feature_count as u32,
            architecture: format!("mlp-{}-layers", mlp.layers.len()),
            task: ModelTask::Classification as i32,
            input: Some(features_input("features", config.feature_count)),
            inputs: vec![features_input("features", config.feature_count)],
            feature_names: config.feature_names,
            ..Default::default()
        },
        model: Box::new(mlp),
        tokenizer: None,
    })
}
