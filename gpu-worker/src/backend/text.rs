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
use inferencehub_proto::pb::ModelKind;
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use super::cpu_bert::CpuBert;
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
    /// The packed, fused CPU encoder ([`CpuBert`]).
    Cpu(CpuBert),
    /// candle's `BertModel` (CUDA, and configurations the CPU encoder does not cover).
    Candle(BertModel),
}

/// A BERT encoder that takes batches of token ids.
pub struct BertBody {
    engine: Engine,
    device: Device,
    pad_id: u32,
}

/// The token ids of every input, refusing anything else.
fn token_rows(inputs: &[ModelInput]) -> anyhow::Result<Vec<&[u32]>> {
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
    /// The encoder over a checkpoint's tensors: the CPU encoder on the CPU when it covers
    /// the configuration, candle's otherwise.
    fn load(
        tensors: &HashMap<String, Tensor>,
        config: &BertConfig,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let engine = if device.is_cpu() && CpuBert::supports(config) {
            Engine::Cpu(CpuBert::load(tensors, config)?)
        } else {
            let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, device);
            Engine::Candle(BertModel::load(vb, config)?)
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
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * longest);
        let mut mask = Vec::with_capacity(rows.len() * longest);
        for row in rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - row.len()));
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - row.len()));
        }
        let shape = (rows.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
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
            Engine::Candle(model) => {
                let (hidden, _) = self.forward_padded(model, &rows)?;
                Ok(hidden.i((.., 0))?.contiguous()?)
            }
        }
    }

    /// Mean of the hidden states over real tokens, optionally L2-normalised: `[batch, hidden]`.
    pub fn embed(&self, inputs: &[ModelInput], normalize: bool) -> anyhow::Result<Tensor> {
        let rows = token_rows(inputs)?;
        let model = match &self.engine {
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
            Engine::Candle(model) => model,
        };
        let (hidden, mask) = self.forward_padded(model, &rows)?;
        let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&counts)?;
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
pub fn load_body(dir: &Path, device: &Device) -> anyhow::Result<(BertBody, BertConfig)> {
    let (config, _) = read_bert_config(dir)?;
    let tensors = read_weights(dir, device)?;
    Ok((BertBody::load(&tensors, &config, device)?, config))
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

/// `BertForSequenceClassification`: CLS hidden state -> pooler (dense + tanh) -> classifier.
pub struct SequenceClassifier {
    body: BertBody,
    pooler: Linear,
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
        let pooled = self.pooler.forward(&cls)?.tanh()?;
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

/// Builds a [`SequenceClassifier`] from a transformers checkpoint folder.
pub fn sequence_classifier(
    dir: &Path,
    device: &Device,
) -> anyhow::Result<(SequenceClassifier, Vec<String>, BertConfig)> {
    let (config, extra) = read_bert_config(dir)?;
    if !extra
        .architectures
        .iter()
        .any(|a| a == "BertForSequenceClassification")
    {
        bail!(
            "config.json architectures {:?} are not supported: expected \
             BertForSequenceClassification (or put a head.safetensors beside a sentence encoder)",
            extra.architectures
        );
    }
    if let Some(problem) = extra.problem_type.as_deref()
        && problem != "single_label_classification"
    {
        bail!("problem_type {problem:?} is not supported: only single_label_classification");
    }
    let tensors = read_weights(dir, device)?;
    let num_labels = match tensors.get("classifier.weight") {
        Some(w) => w.dim(0)?,
        None => bail!("model.safetensors has no classifier.weight"),
    };
    if num_labels < 2 {
        bail!("the classifier has {num_labels} output; regression heads are not supported");
    }
    let body = BertBody::load(&tensors, &config, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let h = config.hidden_size;
    let pooler = candle_nn::linear(h, h, vb.pp("bert.pooler.dense"))?;
    let classifier = candle_nn::linear(h, num_labels, vb.pp("classifier"))?;
    let labels = labels_from_id2label(extra.id2label, num_labels)?;
    Ok((
        SequenceClassifier {
            body,
            pooler,
            classifier,
        },
        labels,
        config,
    ))
}

/// Loads a `BertForSequenceClassification` model folder.
pub fn load_sequence_classifier(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let (classifier, labels, config) = sequence_classifier(dir, &opts.device)?;
    let max_tokens = config.max_position_embeddings;
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    Ok(LoadedModel {
        spec: text_spec(
            name,
            version,
            labels,
            max_tokens,
            opts,
            "bert-sequence-classification",
        ),
        classifier: Box::new(classifier),
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
    let (body, config) = load_body(dir, &opts.device)?;
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
