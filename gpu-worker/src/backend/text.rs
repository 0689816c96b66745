//! BERT-family text classifiers on Candle.
//!
//! Two on-disk shapes are served:
//! - a transformers `BertForSequenceClassification` checkpoint, loaded unchanged
//!   (`bert.*` encoder, `bert.pooler.dense`, `classifier`, labels from `id2label`);
//! - a sentence-embedding body (any BERT) with mean pooling, plus a linear head stored in
//!   `head.safetensors` beside it (the SetFit shape), labels in that file's metadata.
//!
//! Inputs arrive as token ids (tokenised off the model thread); a batch is padded to its
//! longest sequence and the attention mask keeps padding out of attention and pooling.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use inferencehub_proto::pb::{ModelKind, ModelTask};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use super::cpu_bert::CpuBert;
use super::hf::{
    AsBert, HeadActivation, ModernBertClassifier, distilbert_as_bert, roberta_as_bert,
};
use super::tensor_bert::TensorBert;
use super::{Classifier, LoadOptions, LoadedModel, ModelInput, ModelSpec};

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

/// The fields of a transformers `config.json` that the BERT config does not cover.
#[derive(Debug, Deserialize)]
struct ExtraConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    id2label: Option<HashMap<String, String>>,
    #[serde(default)]
    problem_type: Option<String>,
}

/// Reads `tokenizer.json` and sets it up for serving: no padding (the batcher pads to the
/// longest input of each batch) and truncation at `max_tokens`.
pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> anyhow::Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
    Ok(tokenizer)
}

fn read_bert_config(dir: &Path) -> anyhow::Result<(BertConfig, ExtraConfig)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let config: BertConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let extra: ExtraConfig = serde_json::from_str(&text)?;
    Ok((config, extra))
}

/// Which implementation runs the encoder.
enum Engine {
    /// The packed, fused CPU encoder ([`CpuBert`]): the CPU in f32.
    Cpu(CpuBert),
    /// The tensor encoder ([`TensorBert`]): CUDA, half precision, and configurations the
    /// CPU encoder does not cover.
    Tensor(TensorBert),
    /// candle-transformers' `BertModel`, kept only for side-by-side benchmarks.
    Candle(BertModel),
}

/// A BERT encoder that takes batches of token ids.
pub struct BertBody {
    engine: Engine,
    device: Device,
    pad_id: u32,
}

/// `rows` padded with `pad` to the longest: token ids and mask (1 on real tokens), both
/// `[batch, longest]` u32 tensors on `device`.
pub(crate) fn pad_batch(
    rows: &[&[u32]],
    pad: u32,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut mask = Vec::with_capacity(rows.len() * longest);
    for row in rows {
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(pad, longest - row.len()));
        mask.extend(std::iter::repeat_n(1u32, row.len()));
        mask.extend(std::iter::repeat_n(0u32, longest - row.len()));
    }
    let shape = (rows.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// The token ids of every input, refusing anything else.
pub(crate) fn token_rows(inputs: &[ModelInput]) -> anyhow::Result<Vec<&[u32]>> {
    inputs
        .iter()
        .map(|input| match input {
            ModelInput::Tokens(ids) if !ids.is_empty() => Ok(ids.as_slice()),
            ModelInput::Tokens(_) => bail!("empty token sequence"),
            ModelInput::Features(_) => bail!("a text model was given features"),
        })
        .collect()
}

impl BertBody {
    /// Seconds per stage of one forward pass over `inputs`, where the encoder can say (the
    /// tensor encoder); `None` for the others.
    pub fn profile(
        &self,
        inputs: &[ModelInput],
    ) -> anyhow::Result<Option<Vec<(&'static str, f64)>>> {
        let rows = token_rows(inputs)?;
        match &self.engine {
            Engine::Tensor(bert) => Ok(Some(bert.profile(&rows)?)),
            _ => Ok(None),
        }
    }

    /// The encoder over a checkpoint's tensors: the packed CPU encoder on the CPU in f32
    /// when it covers the configuration, the tensor encoder otherwise.
    fn load(
        tensors: &HashMap<String, Tensor>,
        config: &BertConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let engine = if device.is_cpu() && dtype == DType::F32 && CpuBert::supports(config) {
            Engine::Cpu(CpuBert::load(tensors, config)?)
        } else {
            Engine::Tensor(TensorBert::load(tensors, config, dtype, device)?)
        };
        Ok(Self {
            engine,
            device: device.clone(),
            pad_id: config.pad_token_id as u32,
        })
    }

    /// candle's path: last hidden states `[batch, longest, hidden]` and the attention
    /// mask `[batch, longest]` (1 for real tokens).
    fn forward_padded(
        &self,
        model: &BertModel,
        rows: &[&[u32]],
    ) -> anyhow::Result<(Tensor, Tensor)> {
        let (ids, mask) = pad_batch(rows, self.pad_id, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
        Ok((hidden, mask))
    }

    /// The hidden state of each input's first token (`[CLS]`): `[batch, hidden]`.
    pub fn first_token(&self, inputs: &[ModelInput]) -> anyhow::Result<Tensor> {
        let rows = token_rows(inputs)?;
        match &self.engine {
            Engine::Cpu(bert) => {
                let packed = bert.forward(&rows)?;
                let h = packed.hidden;
                let mut out = Vec::with_capacity(rows.len() * h);
                for i in 0..packed.len() {
                    out.extend_from_slice(&packed.rows(i)[..h]);
                }
                Ok(Tensor::from_vec(out, (rows.len(), h), &self.device)?)
            }
            Engine::Tensor(bert) => bert.first_token(&rows),
            Engine::Candle(model) => {
                let (hidden, _) = self.forward_padded(model, &rows)?;
                Ok(hidden.i((.., 0))?.contiguous()?)
            }
        }
    }

    /// Mean of the hidden states over real tokens, optionally L2-normalised: `[batch, hidden]`.
    pub fn embed(&self, inputs: &[ModelInput], normalize: bool) -> anyhow::Result<Tensor> {
        let rows = token_rows(inputs)?;
        let mean = match &self.engine {
            Engine::Cpu(bert) => {
                let packed = bert.forward(&rows)?;
                let h = packed.hidden;
                let mut out = vec![0f32; rows.len() * h];
                for (i, mean) in out.chunks_exact_mut(h).enumerate() {
                    let tokens = packed.rows(i);
                    for row in tokens.chunks_exact(h) {
                        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                    }
                    let n = (tokens.len() / h) as f32;
                    mean.iter_mut().for_each(|m| *m /= n);
                    if normalize {
                        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                        mean.iter_mut().for_each(|m| *m /= norm);
                    }
                }
                return Ok(Tensor::from_vec(out, (rows.len(), h), &self.device)?);
            }
            Engine::Tensor(bert) => bert.mean_pooled(&rows)?,
            Engine::Candle(model) => {
                let (hidden, mask) = self.forward_padded(model, &rows)?;
                let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
                summed.broadcast_div(&counts)?
            }
        };
        if !normalize {
            return Ok(mean);
        }
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        Ok(mean.broadcast_div(&norm)?)
    }
}

/// The tensors of `dir/model.safetensors`.
fn read_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(dir.join("model.safetensors"), device)
        .context("reading model.safetensors")
}

/// Loads the BERT body of `dir` (`config.json` + `model.safetensors`) and its config.
pub fn load_body(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<(BertBody, BertConfig)> {
    let (config, _) = read_bert_config(dir)?;
    let tensors = read_weights(dir, device)?;
    Ok((BertBody::load(&tensors, &config, device, dtype)?, config))
}

/// Like [`load_body`], but always on candle's `BertModel`, padded batches and all: the
/// engine the CPU encoder replaced, kept for side-by-side measurements.
pub fn load_body_on_candle(dir: &Path, device: &Device) -> anyhow::Result<BertBody> {
    let (config, _) = read_bert_config(dir)?;
    let vb = VarBuilder::from_tensors(read_weights(dir, device)?, DType::F32, device);
    Ok(BertBody {
        engine: Engine::Candle(BertModel::load(vb, &config)?),
        device: device.clone(),
        pad_id: config.pad_token_id as u32,
    })
}

/// A BERT-family sequence classifier: first-token hidden state -> dense -> activation ->
/// projection (BERT's pooler + classifier, RoBERTa's classification head, DistilBERT's
/// pre_classifier + classifier).
pub struct SequenceClassifier {
    body: BertBody,
    pooler: Linear,
    activation: HeadActivation,
    classifier: Linear,
}

impl Classifier for SequenceClassifier {
    fn classify(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        let logits = self.logits_tensor(inputs)?;
        Ok(candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?)
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

fn labels_from_id2label(
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
fn architecture_of(extra: &ExtraConfig) -> anyhow::Result<&'static str> {
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
    if let Some(problem) = extra.problem_type.as_deref()
        && problem != "single_label_classification"
    {
        bail!("problem_type {problem:?} is not supported: only single_label_classification");
    }
    Ok(arch)
}

/// The number of outputs of the projection `name.weight`, at least 2.
fn label_count(tensors: &HashMap<String, Tensor>, name: &str) -> anyhow::Result<usize> {
    let num_labels = match tensors.get(&format!("{name}.weight")) {
        Some(w) => w.dim(0)?,
        None => bail!("model.safetensors has no {name}.weight"),
    };
    if num_labels < 2 {
        bail!("the classifier has {num_labels} output; regression heads are not supported");
    }
    Ok(num_labels)
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

/// Loads a transformers `*ForSequenceClassification` model folder (see [`ARCHITECTURES`]).
pub fn load_sequence_classifier(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let extra: ExtraConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let arch = architecture_of(&extra)?;
    let (classifier, labels, max_tokens): (Box<dyn Classifier>, _, _) =
        if arch == "ModernBertForSequenceClassification" {
            let tensors = read_weights(dir, &opts.device)?;
            let num_labels = label_count(&tensors, "classifier")?;
            let labels = labels_from_id2label(extra.id2label, num_labels)?;
            let (model, max_tokens) =
                ModernBertClassifier::load(&text, tensors, &labels, &opts.device)?;
            (Box::new(model), labels, max_tokens)
        } else {
            let (classifier, labels, config) = sequence_classifier(dir, &opts.device, opts.dtype)?;
            (Box::new(classifier), labels, config.max_position_embeddings)
        };
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    let architecture = arch
        .trim_end_matches("ForSequenceClassification")
        .to_lowercase();
    Ok(LoadedModel {
        spec: text_spec(
            name,
            version,
            labels,
            max_tokens,
            opts,
            &format!("{architecture}-sequence-classification"),
        ),
        classifier,
        tokenizer: Some(Arc::new(tokenizer)),
    })
}

fn text_spec(
    name: &str,
    version: String,
    labels: Vec<String>,
    max_tokens: usize,
    opts: &LoadOptions,
    architecture: &str,
) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        version,
        kind: ModelKind::Text,
        labels,
        feature_count: 0,
        max_tokens,
        max_prompt_bytes: opts.max_prompt_bytes,
        architecture: architecture.to_string(),
        task: ModelTask::Classification,
        input: ModelSpec::text_input(),
        value_count: 0,
        feature_names: Vec::new(),
    }
}

/// Sentence encoder + mean pooling + linear head.
pub struct SentenceClassifier {
    body: BertBody,
    head: Linear,
    normalize: bool,
}

impl Classifier for SentenceClassifier {
    fn classify(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        let embedding = self.body.embed(inputs, self.normalize)?;
        let logits = self.head.forward(&embedding)?;
        Ok(candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?)
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

/// Loads a sentence-embedding classifier folder (body files + `head.safetensors`).
pub fn load_sentence_classifier(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let (body, config) = load_body(dir, &opts.device, opts.dtype)?;
    let (head, head_config) = read_head(&dir.join(HEAD_FILE), &opts.device)?;
    if head.weight().dim(1)? != config.hidden_size {
        bail!(
            "head expects {} inputs but the body's hidden size is {}",
            head.weight().dim(1)?,
            config.hidden_size
        );
    }
    let max_tokens = head_config
        .max_tokens
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    Ok(LoadedModel {
        spec: text_spec(
            name,
            version,
            head_config.labels.clone(),
            max_tokens,
            opts,
            "sentence-embedding-mean-pooling+linear",
        ),
        classifier: Box::new(SentenceClassifier {
            body,
            head,
            normalize: head_config.normalize,
        }),
        tokenizer: Some(Arc::new(tokenizer)),
    })
}

/// Writes a head file in the format [`read_head`] reads.
pub fn write_head(
    path: &Path,
    weight: &Tensor,
    bias: &Tensor,
    config: &HeadConfig,
) -> anyhow::Result<()> {
    let metadata = HashMap::from([(
        HEAD_METADATA_KEY.to_string(),
        serde_json::to_string(config)?,
    )]);
    let weight = weight.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let bias = bias.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    safetensors::serialize_to_file([("bias", &bias), ("weight", &weight)], Some(metadata), path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
