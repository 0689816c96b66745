//! Sentence embeddings: a folder in the sentence-transformers layout (`modules.json`: the
//! encoder, a `Pooling` module with its mode, optionally `Normalize`) answers each text
//! with one vector. The encoder is any family the worker runs (BERT, DistilBERT, RoBERTa,
//! XLM-RoBERTa on the BERT encoders, ModernBERT on candle's), or an ONNX export
//! (`super::onnx::text`) whose output is the token states or the pooled vector.
//!
//! Pooling, as sentence-transformers' `Pooling` module computes it over the real tokens of
//! one input: `mean`, `cls` (the first token), `max` (element-wise), `mean_sqrt_len` (the
//! sum over `sqrt(tokens)`); then an L2 normalisation where the folder lists `Normalize`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::Config as BertConfig;
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask};
use serde::Deserialize;

use super::bert::encoder::{BertBody, read_weights};
use super::bert::weights::{distilbert_as_bert, roberta_as_bert};
use super::model::{LoadOptions, LoadedModel, Model, ModelInput, Output, prompt_input, token_rows};
use super::modernbert;
use super::tokens::{cut_padding, load_tokenizer, pad_batch};

/// The file that makes a folder a sentence-embedding model.
pub const MODULES_FILE: &str = "modules.json";

/// How the token states of one input become its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over real tokens.
    Mean,
    /// The first token's state.
    Cls,
    /// The element-wise maximum over real tokens.
    Max,
    /// The sum over real tokens divided by the square root of their number.
    MeanSqrtLen,
}

impl Pooling {
    /// Its name in `ListModels` (`mean`, `cls`, `max`, `mean_sqrt_len`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::Max => "max",
            Self::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// What the sentence-transformers files of a folder say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// The pooling mode.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`, where given.
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingJson {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertJson {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

/// Whether `dir` is in the sentence-transformers layout.
pub fn is_sentence_folder(dir: &Path) -> bool {
    dir.join(MODULES_FILE).is_file()
}

/// Reads `modules.json`, the pooling module's `config.json` and `sentence_bert_config.json`;
/// a module the worker does not serve (a `Dense` projection, say) or a pooling mode it does
/// not compute is refused, naming it.
pub fn read_layout(dir: &Path) -> anyhow::Result<Layout> {
    let path = dir.join(MODULES_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let modules: Vec<Module> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut pooling_dir = None;
    let mut normalize = false;
    for m in &modules {
        match m.kind.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Pooling" => pooling_dir = Some(m.path.clone()),
            "Normalize" => normalize = true,
            other => bail!(
                "{MODULES_FILE}: module {other:?} ({}) is not served",
                m.kind
            ),
        }
    }
    let pooling_dir =
        pooling_dir.with_context(|| format!("{MODULES_FILE} lists no Pooling module"))?;
    if pooling_dir.contains("..") || pooling_dir.starts_with('/') {
        bail!("{MODULES_FILE}: the Pooling module's path {pooling_dir:?} leaves the folder");
    }
    let path = dir.join(&pooling_dir).join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let p: PoolingJson =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if p.pooling_mode_weightedmean_tokens || p.pooling_mode_lasttoken {
        bail!(
            "{}: weighted-mean and last-token pooling are not served",
            path.display()
        );
    }
    let modes = [
        (p.pooling_mode_mean_tokens, Pooling::Mean),
        (p.pooling_mode_cls_token, Pooling::Cls),
        (p.pooling_mode_max_tokens, Pooling::Max),
        (p.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
    ];
    let chosen: Vec<Pooling> = modes
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect();
    let [pooling] = chosen.as_slice() else {
        bail!(
            "{}: exactly one pooling mode must be on (mean, cls, max or mean_sqrt_len), got {}",
            path.display(),
            chosen.len()
        );
    };
    let sbert = dir.join("sentence_bert_config.json");
    let max_seq_length = if sbert.is_file() {
        let text = std::fs::read_to_string(&sbert)?;
        serde_json::from_str::<SentenceBertJson>(&text)
            .with_context(|| format!("parsing {}", sbert.display()))?
            .max_seq_length
    } else {
        None
    };
    Ok(Layout {
        pooling: *pooling,
        normalize,
        max_seq_length,
    })
}

/// The vector of one input from its token states (`[tokens, hidden]`, row-major).
pub fn pool(states: &[f32], hidden: usize, layout: &Layout) -> Vec<f32> {
    let tokens = states.len() / hidden.max(1);
    let rows = states.chunks_exact(hidden);
    let mut v = match layout.pooling {
        Pooling::Cls => states[..hidden.min(states.len())].to_vec(),
        Pooling::Max => rows.fold(vec![f32::NEG_INFINITY; hidden], |mut m, r| {
            m.iter_mut().zip(r).for_each(|(m, &x)| *m = m.max(x));
            m
        }),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let mut sum = vec![0f32; hidden];
            for r in rows {
                sum.iter_mut().zip(r).for_each(|(s, &x)| *s += x);
            }
            let by = match layout.pooling {
                Pooling::Mean => tokens as f32,
                _ => (tokens as f32).sqrt(),
            };
            sum.iter_mut().for_each(|s| *s /= by.max(1.0));
            sum
        }
    };
    if layout.normalize {
        normalize(&mut v);
    }
    v
}

/// `v` scaled to unit L2 norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// An encoder that gives every token's last hidden state.
pub trait TokenStates: Send {
    /// Per input, its token states `[tokens, hidden]` row-major (no padding); an encoder
    /// that pools itself gives the one pooled row (`[1, hidden]`), which every pooling mode
    /// leaves as it is.
    fn token_states(&mut self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>>;
}

impl TokenStates for BertBody {
    fn token_states(&mut self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        BertBody::token_states(self, rows)
    }
}

/// candle's ModernBERT encoder.
struct ModernBert {
    model: candle_transformers::models::modernbert::ModernBert,
    pad_id: u32,
    device: Device,
}

impl TokenStates for ModernBert {
    fn token_states(&mut self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let (ids, mask) = pad_batch(rows, self.pad_id, &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?.to_dtype(DType::F32)?;
        cut_padding(&hidden, rows)
    }
}

/// A sentence-embedding model behind the [`Model`] trait.
pub struct EmbeddingModel {
    encoder: Box<dyn TokenStates>,
    layout: Layout,
    hidden: usize,
}

impl EmbeddingModel {
    /// `encoder`'s token states pooled per `layout` into `hidden`-wide vectors.
    pub fn new(encoder: Box<dyn TokenStates>, layout: Layout, hidden: usize) -> Self {
        Self {
            encoder,
            layout,
            hidden,
        }
    }
}

impl Model for EmbeddingModel {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let rows = token_rows(inputs)?;
        let states = self.encoder.token_states(&rows)?;
        if states.len() != rows.len() {
            bail!(
                "the encoder gave {} inputs for {}",
                states.len(),
                rows.len()
            );
        }
        states
            .iter()
            .zip(&rows)
            .map(|(s, r)| {
                if s.len() != r.len() * self.hidden && s.len() != self.hidden {
                    bail!("token states of {} values for {} tokens", s.len(), r.len());
                }
                Ok(Output::from(pool(s, self.hidden, &self.layout)))
            })
            .collect()
    }
}

/// The `ListModels` entry of an embedding model.
pub fn embedding_info(
    name: &str,
    version: String,
    dimension: usize,
    max_tokens: usize,
    layout: &Layout,
    architecture: &str,
    opts: &LoadOptions,
) -> ModelInfo {
    ModelInfo {
        name: name.to_string(),
        version,
        kind: ModelKind::Text as i32,
        max_tokens: max_tokens as u32,
        max_prompt_bytes: opts.max_prompt_bytes as u32,
        architecture: format!(
            "{architecture}-embedding-{}{}",
            layout.pooling.name(),
            if layout.normalize { "-normalized" } else { "" }
        ),
        task: ModelTask::Embedding as i32,
        input: Some(prompt_input()),
        inputs: vec![prompt_input()],
        value_count: dimension as u32,
        ..Default::default()
    }
}

/// The fields of `config.json` that pick the encoder.
#[derive(Deserialize)]
struct EncoderJson {
    #[serde(default)]
    model_type: String,
}

/// `tensors` with every name under `prefix` (a bare encoder saved by `AutoModel`, as the
/// renames expect the `*ForSequenceClassification` layout).
fn under(prefix: &str, tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if tensors.keys().any(|k| k.starts_with(prefix)) {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// Loads a sentence-transformers folder whose encoder is a transformers checkpoint.
pub fn load(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let layout = read_layout(dir)?;
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let json: EncoderJson =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let tensors = read_weights(dir, &opts.device)?;
    let (encoder, hidden, positions): (Box<dyn TokenStates>, usize, usize) =
        match json.model_type.as_str() {
            "modernbert" => {
                let (model, hidden, positions, pad_id) =
                    modernbert::encoder(&text, under("model.", tensors), &opts.device)?;
                let encoder = ModernBert {
                    model,
                    pad_id,
                    device: opts.device.clone(),
                };
                (Box::new(encoder), hidden, positions)
            }
            family => {
                let config: BertConfig;
                let tensors = match family {
                    "bert" => {
                        config = serde_json::from_str(&text).context("parsing config.json")?;
                        tensors
                    }
                    "distilbert" => {
                        let as_bert =
                            distilbert_as_bert(&text, under("distilbert.", tensors), &opts.device)?;
                        config = as_bert.config;
                        as_bert.tensors
                    }
                    "roberta" | "xlm-roberta" => {
                        let as_bert = roberta_as_bert(&text, under("roberta.", tensors))?;
                        config = as_bert.config;
                        as_bert.tensors
                    }
                    other => bail!(
                        "config.json model_type {other:?} is not an encoder the worker runs \
                         (bert, distilbert, roberta, xlm-roberta, modernbert)"
                    ),
                };
                let body = BertBody::load(&tensors, &config, &opts.device, opts.dtype)?;
                (
                    Box::new(body),
                    config.hidden_size,
                    config.max_position_embeddings,
                )
            }
        };
    let max_tokens = layout.max_seq_length.unwrap_or(positions).min(positions);
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    let family = if json.model_type.is_empty() {
        "bert".to_string()
    } else {
        json.model_type.clone()
    };
    Ok(LoadedModel {
        info: embedding_info(name, version, hidden, max_tokens, &layout, &family, opts),
        model: Box::new(EmbeddingModel::new(encoder, layout, hidden)),
        tokenizer: Some(Arc::new(tokenizer)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pooling_mode_reduces_the_real_tokens() {
        // Two tokens of width 2.
        let states = [1.0, -2.0, 3.0, 4.0];
        let layout = |pooling| Layout {
            pooling,
            normalize: false,
            max_seq_length: None,
        };
        assert_eq!(pool(&states, 2, &layout(Pooling::Mean)), [2.0, 1.0]);
        assert_eq!(pool(&states, 2, &layout(Pooling::Cls)), [1.0, -2.0]);
        assert_eq!(pool(&states, 2, &layout(Pooling::Max)), [3.0, 4.0]);
        let s = pool(&states, 2, &layout(Pooling::MeanSqrtLen));
        assert!((s[0] - 4.0 / 2f32.sqrt()).abs() < 1e-6);
        let n = pool(
            &states,
            2,
            &Layout {
                normalize: true,
                ..layout(Pooling::Max)
            },
        );
        assert!((n[0] - 0.6).abs() < 1e-6 && (n[1] - 0.8).abs() < 1e-6);
    }
}
