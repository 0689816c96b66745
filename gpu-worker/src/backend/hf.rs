//! Hugging Face encoder checkpoints other than BERT, loaded unchanged from the files
//! transformers saves (`config.json`, `model.safetensors`, `tokenizer.json`).
//!
//! DistilBERT and RoBERTa / XLM-RoBERTa are BERT encoders with other tensor names (and,
//! for RoBERTa, positions counted from `pad_token_id + 1`): they are renamed into BERT's
//! layout here, so the same encoders run them (the packed CPU encoder; the tensor encoder
//! on CUDA and in half precision).
//! ModernBERT (rotary positions, GeGLU, alternating local and global attention) runs on
//! candle-transformers' implementation, with transformers' config keys translated.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use candle_transformers::models::modernbert::{
    ClassifierConfig, ClassifierPooling, Config as ModernBertConfig,
    ModernBertForSequenceClassification,
};
use serde::Deserialize;

use super::{Classifier, ModelInput};

/// The activation between a sequence classifier's dense layer and its projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadActivation {
    /// BERT's pooler and RoBERTa's classification head.
    Tanh,
    /// DistilBERT's `pre_classifier`.
    Relu,
}

/// A BERT-layout view of a checkpoint: its config, tensors under `bert.` names, and the
/// names of its head (dense layer, activation, projection).
pub struct AsBert {
    /// Encoder configuration in BERT's terms.
    pub config: BertConfig,
    /// Tensors renamed into BERT's layout.
    pub tensors: HashMap<String, Tensor>,
    /// Prefix of the head's dense layer.
    pub dense: &'static str,
    /// Its activation.
    pub activation: HeadActivation,
    /// Prefix of the head's output projection.
    pub projection: &'static str,
}

/// `RobertaForSequenceClassification` / `XLMRobertaForSequenceClassification`.
pub fn roberta_as_bert(
    config_text: &str,
    mut tensors: HashMap<String, Tensor>,
) -> anyhow::Result<AsBert> {
    let mut config: BertConfig =
        serde_json::from_str(config_text).context("parsing config.json as a RoBERTa config")?;
    tensors = tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("roberta.") {
            Some(rest) => (format!("bert.{rest}"), v),
            None => (k, v),
        })
        .collect();
    // RoBERTa numbers real tokens from pad_token_id + 1; the rows before are never used.
    let offset = config.pad_token_id + 1;
    let name = "bert.embeddings.position_embeddings.weight";
    let positions = tensors
        .get(name)
        .with_context(|| format!("the checkpoint lacks {name}"))?;
    let rows = positions.dim(0)?;
    if rows <= offset {
        bail!("{rows} position embeddings leave none after the padding offset {offset}");
    }
    let shifted = positions.narrow(0, offset, rows - offset)?.contiguous()?;
    tensors.insert(name.to_string(), shifted);
    config.max_position_embeddings = rows - offset;
    config.model_type = Some("bert".into());
    Ok(AsBert {
        config,
        tensors,
        dense: "classifier.dense",
        activation: HeadActivation::Tanh,
        projection: "classifier.out_proj",
    })
}

/// The fields of a DistilBERT `config.json`.
#[derive(Debug, Deserialize)]
struct DistilBertJson {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_activation")]
    activation: String,
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: usize,
}

fn default_activation() -> String {
    "gelu".into()
}

/// `DistilBertForSequenceClassification`.
pub fn distilbert_as_bert(
    config_text: &str,
    tensors: HashMap<String, Tensor>,
    device: &Device,
) -> anyhow::Result<AsBert> {
    let d: DistilBertJson =
        serde_json::from_str(config_text).context("parsing config.json as a DistilBERT config")?;
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": d.vocab_size,
        "hidden_size": d.dim,
        "num_hidden_layers": d.n_layers,
        "num_attention_heads": d.n_heads,
        "intermediate_size": d.hidden_dim,
        "hidden_act": d.activation,
        "hidden_dropout_prob": 0.0,
        "max_position_embeddings": d.max_position_embeddings,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        // DistilBERT's LayerNorms use eps 1e-12, as BERT's.
        "layer_norm_eps": 1e-12,
        "pad_token_id": d.pad_token_id,
        "model_type": "bert",
    }))
    .context("DistilBERT config in BERT's terms")?;
    let renames: [(&str, &str); 10] = [
        ("attention.q_lin", "attention.self.query"),
        ("attention.k_lin", "attention.self.key"),
        ("attention.v_lin", "attention.self.value"),
        ("attention.out_lin", "attention.output.dense"),
        ("sa_layer_norm", "attention.output.LayerNorm"),
        ("ffn.lin1", "intermediate.dense"),
        ("ffn.lin2", "output.dense"),
        ("output_layer_norm", "output.LayerNorm"),
        ("distilbert.transformer.layer.", "bert.encoder.layer."),
        ("distilbert.embeddings.", "bert.embeddings."),
    ];
    let mut renamed = HashMap::with_capacity(tensors.len() + 1);
    for (name, tensor) in tensors {
        let mut new = name.clone();
        for (from, to) in renames {
            new = new.replace(from, to);
        }
        renamed.insert(new, tensor);
    }
    // No segment embeddings in DistilBERT: BERT's type-0 row becomes zeros.
    renamed.insert(
        "bert.embeddings.token_type_embeddings.weight".into(),
        Tensor::zeros((1, d.dim), DType::F32, device)?,
    );
    Ok(AsBert {
        config,
        tensors: renamed,
        dense: "pre_classifier",
        activation: HeadActivation::Relu,
        projection: "classifier",
    })
}

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
            classifier_config: Some(ClassifierConfig {
                id2label,
                label2id,
                classifier_pooling: pooling,
            }),
        };
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

impl Classifier for ModernBertClassifier {
    fn classify(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        let rows = super::text::token_rows(inputs)?;
        let (ids, mask) = super::text::pad_batch(&rows, self.pad_id, &self.device)?;
        // candle's head ends in a softmax: these are probabilities already.
        Ok(self
            .model
            .forward(&ids, &mask)?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }
}
