//! The parts of a transformers `config.json` every text classifier shares: the
//! architecture it names, its labels (`id2label`) and its problem type.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::Tensor;
use candle_transformers::models::bert::Config as BertConfig;
use serde::Deserialize;

/// The fields of a transformers `config.json` that the BERT config does not cover.
#[derive(Debug, Deserialize)]
pub struct ExtraConfig {
    /// The model classes it was saved as.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Label names by output index.
    #[serde(default)]
    pub id2label: Option<HashMap<String, String>>,
    /// `single_label_classification`, when given.
    #[serde(default)]
    pub problem_type: Option<String>,
}

/// `dir/config.json` as a BERT config and the rest.
pub fn read_bert_config(dir: &Path) -> anyhow::Result<(BertConfig, ExtraConfig)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let config: BertConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let extra: ExtraConfig = serde_json::from_str(&text)?;
    Ok((config, extra))
}

/// The labels in output order: `id2label`, or `LABEL_i` where the config names none.
pub fn labels_from_id2label(
    id2label: Option<HashMap<String, String>>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let Some(map) = id2label else {
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let mut by_id = BTreeMap::new();
    for (id, label) in map {
        let id: usize = id
            .parse()
            .with_context(|| format!("id2label key {id:?} is not an integer"))?;
        by_id.insert(id, label);
    }
    let labels: Vec<String> = by_id.into_values().collect();
    if labels.len() != n {
        bail!(
            "config.json id2label names {} labels but the classifier has {n} outputs",
            labels.len()
        );
    }
    Ok(labels)
}

/// The sequence-classification architectures served from transformers checkpoints.
pub const ARCHITECTURES: [&str; 5] = [
    "BertForSequenceClassification",
    "DistilBertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "ModernBertForSequenceClassification",
];

/// The served architecture named in `architectures`, refusing others and problem types
/// other than single-label classification.
pub fn architecture_of(extra: &ExtraConfig) -> anyhow::Result<&'static str> {
    let Some(arch) = ARCHITECTURES
        .iter()
        .find(|a| extra.architectures.iter().any(|b| b == *a))
    else {
        bail!(
            "config.json architectures {:?} are not supported: expected one of {} (or put a \
             head.safetensors beside a sentence encoder)",
            extra.architectures,
            ARCHITECTURES.join(", ")
        );
    };
    single_label(extra)?;
    Ok(arch)
}

/// Refuses problem types other than single-label classification (the worker's answers are
/// a softmax over the labels).
pub fn single_label(extra: &ExtraConfig) -> anyhow::Result<()> {
    if let Some(problem) = extra.problem_type.as_deref()
        && problem != "single_label_classification"
    {
        bail!("problem_type {problem:?} is not supported: only single_label_classification");
    }
    Ok(())
}

/// `bert` of `BertForSequenceClassification`: the architecture's family, as `ListModels`
/// shows it.
pub fn family(architecture: &str) -> String {
    architecture
        .trim_end_matches("ForSequenceClassification")
        .to_lowercase()
}

/// The number of outputs of the projection `name.weight`, at least 2.
pub fn label_count(tensors: &HashMap<String, Tensor>, name: &str) -> anyhow::Result<usize> {
    let num_labels = match tensors.get(&format!("{name}.weight")) {
        Some(w) => w.dim(0)?,
        None => bail!("model.safetensors has no {name}.weight"),
    };
    if num_labels < 2 {
        bail!("the classifier has {num_labels} output; regression heads are not supported");
    }
    Ok(num_labels)
}
