//! Checkpoints of BERT's family in BERT's layout: where the encoder's tensors are
//! ([`encoder_prefix`]), and DistilBERT and RoBERTa / XLM-RoBERTa renamed into it (they are
//! BERT encoders with other tensor names and, for RoBERTa, positions counted from
//! `pad_token_id + 1`), so the same encoders run them all.

use std::collections::HashMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;

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

/// The prefix (`""`, `bert.`, `<model_type>.`) under which a checkpoint stores the encoder.
pub fn encoder_prefix(
    tensors: &HashMap<String, Tensor>,
    config: &BertConfig,
) -> anyhow::Result<String> {
    ["".to_string(), "bert.".to_string()]
        .into_iter()
        .chain(config.model_type.as_ref().map(|m| format!("{m}.")))
        .find(|p| tensors.contains_key(&format!("{p}embeddings.word_embeddings.weight")))
        .context("no embeddings.word_embeddings.weight in the checkpoint")
}
