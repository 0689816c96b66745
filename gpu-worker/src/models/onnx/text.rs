//! Transformers exported to ONNX (`torch.onnx.export`, `optimum`, their int8 copies from
//! ONNX Runtime's `quantize_dynamic`), answering `prompt` like the Hugging Face checkpoints:
//! a folder with `model.onnx` taking `input_ids` and, where the export has them,
//! `attention_mask` and `token_type_ids` (`[batch, sequence]`, int64 or int32), beside the
//! `tokenizer.json` that made its ids and the `config.json` that names its labels
//! (`id2label`). The output served is `logits` (else the graph's first float output),
//! turned into probabilities by a softmax. A batch is split into the same length buckets as
//! the worker's own encoders before padding.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{DynValue, Tensor};
use serde::Deserialize;

use super::graph::{FLOAT, GraphProto, INT32, INT64};
use super::session::{output_rows, read_output, session};
use crate::models::embedding::{self, EmbeddingModel, TokenStates};
use crate::models::hf_config::{ExtraConfig, family, labels_from_id2label, single_label};
use crate::models::model::{
    LoadOptions, LoadedModel, Model, ModelInput, Output, rows_output, text_info, token_rows,
};
use crate::models::tokens::{buckets, load_tokenizer, pad_rows};

/// The tokenizer beside `model.onnx` that makes it a text model.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What the worker reads of the folder's `config.json` beyond [`ExtraConfig`].
#[derive(Debug, Deserialize)]
struct TextConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

/// Which of the encoder inputs the graph takes, in its element type.
#[derive(Debug, Clone, Copy)]
struct Feeds {
    mask: bool,
    token_types: bool,
    int32: bool,
}

/// A transformer classifier run by ONNX Runtime.
pub struct OnnxTextClassifier {
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    feeds: Feeds,
    output: String,
    pad_id: u32,
}

/// The graph's inputs for one padded group of token rows.
fn encoder_inputs(
    feeds: Feeds,
    pad_id: u32,
    rows: &[&[u32]],
) -> anyhow::Result<Vec<(&'static str, DynValue)>> {
    let (ids, mask, longest) = pad_rows::<i64>(rows, pad_id);
    let shape = [rows.len(), longest];
    let tensor = |data: Vec<i64>| -> anyhow::Result<DynValue> {
        Ok(if feeds.int32 {
            let data: Vec<i32> = data.into_iter().map(|x| x as i32).collect();
            Tensor::from_array((shape, data))?.into_dyn()
        } else {
            Tensor::from_array((shape, data))?.into_dyn()
        })
    };
    let mut inputs = vec![("input_ids", tensor(ids)?)];
    if feeds.token_types {
        inputs.push(("token_type_ids", tensor(vec![0; shape[0] * shape[1]])?));
    }
    if feeds.mask {
        inputs.push(("attention_mask", tensor(mask)?));
    }
    Ok(inputs)
}

impl OnnxTextClassifier {
    /// The logits of one padded group of token rows.
    fn run_group(&mut self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let inputs = encoder_inputs(self.feeds, self.pad_id, rows)?;
        let outputs = self.session.run_with_options(inputs, &self.run_options)?;
        output_rows(&read_output(&outputs, &self.output)?, rows.len(), true)
    }
}

/// A sentence encoder exported to ONNX: its token states `[batch, sequence, hidden]` (or
/// its pooled vectors `[batch, hidden]`, given as one row each).
pub struct OnnxTokenStates {
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    feeds: Feeds,
    output: String,
    pad_id: u32,
}

impl TokenStates for OnnxTokenStates {
    fn token_states(&mut self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let mut out = vec![Vec::new(); rows.len()];
        for group in buckets(&lengths) {
            let group_rows: Vec<&[u32]> = group.iter().map(|&i| rows[i]).collect();
            let inputs = encoder_inputs(self.feeds, self.pad_id, &group_rows)?;
            let outputs = self.session.run_with_options(inputs, &self.run_options)?;
            let value = outputs
                .get(self.output.as_str())
                .with_context(|| format!("ONNX Runtime gave no output {:?}", self.output))?;
            let (shape, data) = value.try_extract_tensor::<f32>()?;
            let per_row = data.len() / group.len().max(1);
            for (k, &i) in group.iter().enumerate() {
                let row = &data[k * per_row..(k + 1) * per_row];
                out[i] = match shape.len() {
                    // [batch, sequence, hidden]: the real tokens only.
                    3 => row[..rows[i].len() * (shape[2] as usize)].to_vec(),
                    _ => row.to_vec(),
                };
            }
        }
        Ok(out)
    }
}

impl Model for OnnxTextClassifier {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let rows = token_rows(inputs)?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let mut out = vec![Vec::new(); rows.len()];
        for group in buckets(&lengths) {
            let group_rows: Vec<&[u32]> = group.iter().map(|&i| rows[i]).collect();
            for (i, row) in group.iter().zip(self.run_group(&group_rows)?) {
                out[*i] = row;
            }
        }
        Ok(rows_output(out))
    }
}

/// Which inputs the graph takes; anything but the three encoder inputs is refused.
fn feeds(graph: &GraphProto) -> anyhow::Result<Feeds> {
    let mut feeds = Feeds {
        mask: false,
        token_types: false,
        int32: false,
    };
    let mut has_ids = false;
    let mut types = Vec::new();
    for input in graph.fed_inputs() {
        let (elem, dims) = input
            .tensor()
            .with_context(|| format!("input {:?} is not a tensor", input.name))?;
        if dims.len() != 2 || ![INT32, INT64].contains(&elem) {
            bail!(
                "input {:?} is not an int64 or int32 [batch, sequence] tensor",
                input.name
            );
        }
        types.push(elem);
        match input.name.as_str() {
            "input_ids" => has_ids = true,
            "attention_mask" => feeds.mask = true,
            "token_type_ids" => feeds.token_types = true,
            other => bail!(
                "input {other:?}: a text model's graph takes input_ids, attention_mask and \
                 token_type_ids only"
            ),
        }
    }
    if !has_ids {
        bail!("the graph has no input_ids input, so a tokenizer beside it cannot feed it");
    }
    if types.windows(2).any(|w| w[0] != w[1]) {
        bail!("the graph's inputs mix int32 and int64");
    }
    feeds.int32 = types.first() == Some(&INT32);
    Ok(feeds)
}

/// Loads a sentence encoder export (`model.onnx` beside the sentence-transformers files):
/// the output `sentence_embedding` when the graph has it (pooled already), else
/// `last_hidden_state` / `token_embeddings` (else the first float output), pooled per the
/// folder's `modules.json`.
fn load_embedding(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
    bytes: &[u8],
    graph: &GraphProto,
) -> anyhow::Result<LoadedModel> {
    let layout = embedding::read_layout(dir)?;
    let path = dir.join("config.json");
    let config: TextConfig = if path.is_file() {
        serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?
    } else {
        TextConfig {
            model_type: None,
            max_position_embeddings: None,
            pad_token_id: None,
        }
    };
    let feeds = feeds(graph)?;
    let float_output = |name: &str| {
        graph
            .output
            .iter()
            .find(|o| o.name == name && o.tensor().is_some_and(|(t, _)| t == FLOAT))
    };
    let output = float_output("sentence_embedding")
        .or_else(|| float_output("last_hidden_state"))
        .or_else(|| float_output("token_embeddings"))
        .or_else(|| {
            graph
                .output
                .iter()
                .find(|o| o.tensor().is_some_and(|(t, _)| t == FLOAT))
        })
        .map(|o| o.name.clone())
        .context("the graph has no float output (token states or a sentence embedding)")?;
    let max_tokens = max_tokens(&config, layout.max_seq_length);
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    let mut encoder = OnnxTokenStates {
        session: session(bytes, opts)?,
        run_options: RunOptions::new()?
            .with_outputs(OutputSelector::no_default().with(output.as_str())),
        feeds,
        output,
        pad_id: config.pad_token_id.unwrap_or(0),
    };
    let probe = tokenizer.tokenize("warm-up pass")?.0;
    let states = encoder
        .token_states(&[&probe])
        .context("a first run on one prompt")?;
    let width = states[0].len();
    let hidden = if width % probe.len() == 0 && width / probe.len() > 1 {
        width / probe.len()
    } else {
        width
    };
    let architecture = format!(
        "onnxruntime-{}",
        config.model_type.as_deref().unwrap_or("transformer")
    );
    Ok(LoadedModel {
        info: embedding::embedding_info(
            name,
            version,
            hidden,
            max_tokens,
            &layout,
            &architecture,
            opts,
        ),
        model: Box::new(EmbeddingModel::new(Box::new(encoder), layout, hidden)),
        tokenizer: Some(Arc::new(tokenizer)),
    })
}

/// The window of a text export: `max_position_embeddings` (less RoBERTa's two offset
/// rows), capped by `max_seq_length` where given.
fn max_tokens(config: &TextConfig, max_seq_length: Option<usize>) -> usize {
    // RoBERTa-family position tables hold two rows before the first token's.
    let offset = match config.model_type.as_deref() {
        Some("roberta" | "xlm-roberta" | "camembert") => 2,
        _ => 0,
    };
    let positions = config
        .max_position_embeddings
        .unwrap_or(512)
        .saturating_sub(offset)
        .max(2);
    max_seq_length.unwrap_or(positions).min(positions)
}

/// Loads a transformer export folder (`model.onnx`, `tokenizer.json`, `config.json`).
pub fn load(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
    bytes: &[u8],
    graph: &GraphProto,
) -> anyhow::Result<LoadedModel> {
    if embedding::is_sentence_folder(dir) {
        return load_embedding(dir, name, version, opts, bytes, graph);
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: a text model's folder names its labels in config.json (id2label)",
            path.display()
        )
    })?;
    let parse = || format!("parsing {}", path.display());
    let config: TextConfig = serde_json::from_str(&text).with_context(parse)?;
    let extra: ExtraConfig = serde_json::from_str(&text).with_context(parse)?;
    single_label(&extra)?;
    let feeds = feeds(graph)?;
    let output = graph
        .output
        .iter()
        .find(|o| o.name == "logits")
        .or_else(|| {
            graph
                .output
                .iter()
                .find(|o| o.tensor().is_some_and(|(t, _)| t == FLOAT))
        })
        .map(|o| o.name.clone())
        .context("the graph has no logits (float) output")?;
    let max_tokens = max_tokens(&config, None);
    let tokenizer = load_tokenizer(dir, max_tokens)?;
    let session = session(bytes, opts)?;
    let mut model = OnnxTextClassifier {
        session,
        run_options: RunOptions::new()?
            .with_outputs(OutputSelector::no_default().with(output.as_str())),
        feeds,
        output,
        pad_id: config.pad_token_id.unwrap_or(0),
    };
    let probe_ids = tokenizer.tokenize("warm-up pass")?.0;
    let width = model
        .forward(&[ModelInput::Tokens(probe_ids)])
        .context("a first run on one prompt")?[0]
        .row
        .len();
    let labels = labels_from_id2label(extra.id2label, width)?;
    let architecture = extra
        .architectures
        .first()
        .map(|a| family(a))
        .or(config.model_type)
        .unwrap_or_else(|| "transformer".into());
    Ok(LoadedModel {
        info: text_info(
            name,
            version,
            labels,
            max_tokens,
            opts,
            &format!("onnxruntime-{architecture}-sequence-classification"),
        ),
        model: Box::new(model),
        tokenizer: Some(Arc::new(tokenizer)),
    })
}
