//! BERT-family sequence classifiers: first-token hidden state -> dense -> activation ->
//! projection (BERT's pooler + classifier, RoBERTa's classification head, DistilBERT's
//! pre_classifier + classifier).

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::Config as BertConfig;

use super::encoder::{BertBody, read_weights};
use super::weights::{AsBert, HeadActivation, distilbert_as_bert, roberta_as_bert};
use crate::models::hf_config::{ExtraConfig, architecture_of, label_count, labels_from_id2label};
use crate::models::model::{Model, ModelInput, Output, rows_output};

/// A BERT-family sequence classifier: first-token hidden state -> dense -> activation ->
/// projection (BERT's pooler + classifier, RoBERTa's classification head, DistilBERT's
/// pre_classifier + classifier).
pub struct SequenceClassifier {
    body: BertBody,
    pooler: Linear,
    activation: HeadActivation,
    classifier: Linear,
}

impl Model for SequenceClassifier {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let logits = self.logits_tensor(inputs)?;
        Ok(rows_output(
            candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?,
        ))
    }
}

impl SequenceClassifier {
    fn logits_tensor(&self, inputs: &[ModelInput]) -> anyhow::Result<Tensor> {
        let cls = self.body.first_token(inputs)?;
        let dense = self.pooler.forward(&cls)?;
        let pooled = match self.activation {
            HeadActivation::Tanh => dense.tanh()?,
            HeadActivation::Relu => dense.relu()?,
        };
        Ok(self.classifier.forward(&pooled)?)
    }

    /// Raw logits, for checking against a reference implementation.
    pub fn logits(&self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(self.logits_tensor(inputs)?.to_vec2()?)
    }
}

/// Builds a [`SequenceClassifier`] from a BERT, DistilBERT, RoBERTa or XLM-RoBERTa
/// checkpoint folder; returns it with its labels and its encoder config in BERT's terms.
pub fn sequence_classifier(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<(SequenceClassifier, Vec<String>, BertConfig)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let extra: ExtraConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let arch = architecture_of(&extra)?;
    let tensors = read_weights(dir, device)?;
    let as_bert = match arch {
        "BertForSequenceClassification" => AsBert {
            config: serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?,
            tensors,
            dense: "bert.pooler.dense",
            activation: HeadActivation::Tanh,
            projection: "classifier",
        },
        "DistilBertForSequenceClassification" => distilbert_as_bert(&text, tensors, device)?,
        "RobertaForSequenceClassification" | "XLMRobertaForSequenceClassification" => {
            roberta_as_bert(&text, tensors)?
        }
        other => bail!("{other} has no BERT-layout encoder"),
    };
    let num_labels = label_count(&as_bert.tensors, as_bert.projection)?;
    let config = as_bert.config;
    let body = BertBody::load(&as_bert.tensors, &config, device, dtype)?;
    let vb = VarBuilder::from_tensors(as_bert.tensors, DType::F32, device);
    let h = config.hidden_size;
    let pooler = candle_nn::linear(h, h, vb.pp(as_bert.dense))?;
    let classifier = candle_nn::linear(h, num_labels, vb.pp(as_bert.projection))?;
    let labels = labels_from_id2label(extra.id2label, num_labels)?;
    Ok((
        SequenceClassifier {
            body,
            pooler,
            activation: as_bert.activation,
            classifier,
        },
        labels,
        config,
    ))
}
