//! ModernBERT (rotary positions, GeGLU, alternating local and global attention) on
//! candle-transformers' implementation, loaded unchanged from a transformers
//! `ModernBertForSequenceClassification` checkpoint with its config keys translated.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::modernbert::{
    ClassifierConfig, ClassifierPooling, Config as ModernBertConfig, ModernBert,
    ModernBertForSequenceClassification,
};
use serde::Deserialize;

use super::model::{Model, ModelInput, Output, rows_output, token_rows};
use super::tokens::pad_batch;

/// One rotary base per attention kind, as transformers 5 writes it.
#[derive(Debug, Deserialize)]
struct Rope {
    rope_theta: f64,
}

/// The fields of a ModernBERT `config.json` (transformers 4 and 5 spellings).
#[derive(Debug, Deserialize)]
struct ModernBertJson {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(alias = "layer_norm_eps", default = "default_norm_eps")]
    norm_eps: f64,
    pad_token_id: u32,
    global_attn_every_n_layers: usize,
    local_attention: usize,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<HashMap<String, Rope>>,
    #[serde(default)]
    classifier_pooling: Option<String>,
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    classifier_activation: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    classifier_bias: bool,
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// `ModernBertForSequenceClassification` on candle-transformers' implementation, which
/// pads each batch to its longest input and masks the padding.
pub struct ModernBertClassifier {
    model: ModernBertForSequenceClassification,
    device: Device,
    pad_id: u32,
}

impl ModernBertClassifier {
    /// Loads from a checkpoint's config text and tensors; `labels` is the label count.
    pub fn load(
        config_text: &str,
        tensors: HashMap<String, Tensor>,
        labels: &[String],
        device: &Device,
    ) -> anyhow::Result<(Self, usize)> {
        let (config, j) = candle_config(config_text, Some(labels))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = ModernBertForSequenceClassification::load(vb, &config)
            .context("building ModernBertForSequenceClassification")?;
        Ok((
            Self {
                model,
                device: device.clone(),
                pad_id: j.pad_token_id,
            },
            j.max_position_embeddings,
        ))
    }
}

impl Model for ModernBertClassifier {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let rows = token_rows(inputs)?;
        let (ids, mask) = pad_batch(&rows, self.pad_id, &self.device)?;
        // candle's head ends in a softmax: these are probabilities already.
        Ok(rows_output(
            self.model
                .forward(&ids, &mask)?
                .to_dtype(DType::F32)?
                .to_vec2()?,
        ))
    }
}

/// The candle configuration of a ModernBERT `config.json` (and the parsed file), with a
/// classifier head over `labels` when given; refuses what candle's implementation lacks.
fn candle_config(
    config_text: &str,
    labels: Option<&[String]>,
) -> anyhow::Result<(ModernBertConfig, ModernBertJson)> {
    let j: ModernBertJson =
        serde_json::from_str(config_text).context("parsing config.json as ModernBERT")?;
    for (what, act) in [
        ("hidden_activation", &j.hidden_activation),
        ("classifier_activation", &j.classifier_activation),
    ] {
        if let Some(act) = act
            && act != "gelu"
        {
            bail!("{what} {act:?} is not supported: only gelu");
        }
    }
    if j.attention_bias || j.mlp_bias || j.norm_bias || j.classifier_bias {
        bail!(
            "ModernBERT checkpoints with bias terms in attention, MLP, norms or head are not supported"
        );
    }
    let theta = |kind: &str, old: Option<f64>, default: f64| {
        old.or_else(|| {
            j.rope_parameters
                .as_ref()
                .and_then(|r| r.get(kind))
                .map(|r| r.rope_theta)
        })
        .unwrap_or(default)
    };
    let classifier_config = match labels {
        None => None,
        Some(labels) => {
            let pooling = match j.classifier_pooling.as_deref() {
                None | Some("cls") => ClassifierPooling::CLS,
                Some("mean") => ClassifierPooling::MEAN,
                Some(other) => bail!("classifier_pooling {other:?} is not supported"),
            };
            let id2label: HashMap<String, String> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect();
            let label2id = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i.to_string()))
                .collect();
            Some(ClassifierConfig {
                id2label,
                label2id,
                classifier_pooling: pooling,
            })
        }
    };
    let config = ModernBertConfig {
        vocab_size: j.vocab_size,
        hidden_size: j.hidden_size,
        num_hidden_layers: j.num_hidden_layers,
        num_attention_heads: j.num_attention_heads,
        intermediate_size: j.intermediate_size,
        max_position_embeddings: j.max_position_embeddings,
        layer_norm_eps: j.norm_eps,
        pad_token_id: j.pad_token_id,
        global_attn_every_n_layers: j.global_attn_every_n_layers,
        global_rope_theta: theta("full_attention", j.global_rope_theta, 160_000.0),
        local_attention: j.local_attention,
        local_rope_theta: theta("sliding_attention", j.local_rope_theta, 10_000.0),
        classifier_config,
    };
    Ok((config, j))
}

/// The bare encoder of a ModernBERT checkpoint (`model.`-prefixed tensors): the encoder,
/// its hidden size, its window and its padding id.
pub fn encoder(
    config_text: &str,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> anyhow::Result<(ModernBert, usize, usize, u32)> {
    let (config, j) = candle_config(config_text, None)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = ModernBert::load(vb, &config).context("building ModernBertModel")?;
    Ok((
        model,
        j.hidden_size,
        j.max_position_embeddings,
        j.pad_token_id,
    ))
}
