//! ONNX models, as PyTorch (`torch.onnx`), TensorFlow/Keras (`tf2onnx`), scikit-learn
//! (`skl2onnx`), XGBoost and LightGBM (`onnxmltools`) export them, run by ONNX Runtime
//! ([`runtime`]): standard and classical-ML (`ai.onnx.ml`) operators alike.
//!
//! Folder layout: `model.onnx`, and optionally `model.json` ([`OnnxSettings`]) for labels
//! and settings the graph does not hold. The graph must take one tensor input of shape
//! `[batch, features]`, or `[batch, d1, d2, …]` with every dimension but the batch fixed
//! (an image: `[batch, channels, height, width]`), of float, double or int64; the worker
//! feeds it the request's features, the elements of one input in row-major order.
//!
//! Loading picks the output to serve and what it means:
//! - exported classifiers (`ZipMap`, `TreeEnsembleClassifier`, `LinearClassifier`): the
//!   probability tensor, labels from the graph's `classlabels_*` (the tensor in front of a
//!   `ZipMap` is made a graph output, so no per-row maps are built);
//! - exported regressors (`TreeEnsembleRegressor`, `LinearRegressor`): the values;
//! - neural networks: the graph's float output, read as probabilities (or logits, with
//!   `"softmax": true`), labels from `model.json`; a single-column output is a regression.
//!
//! A folder that also holds `tokenizer.json` is a transformer export answering text
//! ([`text`]). An operator ONNX Runtime does not implement fails the load with its message,
//! which names the operator.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use inferencehub_proto::pb::{self, ModelInfo, ModelKind, ModelTask, TensorInfo};
use inferencehub_proto::{DataType, tensor};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::DynValue;
use serde::Deserialize;

use self::graph::{DOUBLE, FLOAT, GraphProto, NodeProto, ValueInfoProto};
use self::session::{output_rows, read_output, session};
use super::model::{
    LoadOptions, LoadedModel, Model, ModelInput, Output, feature_matrix, zero_inputs,
};

pub mod graph;
pub mod runtime;
pub mod session;
pub mod text;
pub mod values;

/// The graph file of an ONNX model folder.
pub const MODEL_FILE: &str = "model.onnx";
/// The optional settings beside it.
pub const SETTINGS_FILE: &str = "model.json";

/// Contents of `model.json`; every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSettings {
    /// Labels in output order (neural networks; overrides the graph's class labels).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// `"classification"` or `"regression"`, where the graph leaves it open.
    #[serde(default)]
    pub task: Option<String>,
    /// The graph output to serve, by name.
    #[serde(default)]
    pub output: Option<String>,
    /// Apply a softmax to the output (the network ends in logits).
    #[serde(default)]
    pub softmax: bool,
    /// Names of the features, for documentation and `ListModels`.
    #[serde(default)]
    pub feature_names: Vec<String>,
}

/// One input the graph takes.
#[derive(Debug, Clone)]
struct Feed {
    /// Its name, type and shape as `ModelInfo.inputs` lists it (`-1` for dynamic axes).
    info: TensorInfo,
    datatype: DataType,
}

/// A loaded ONNX graph behind the [`Model`] trait.
pub struct OnnxModel {
    session: Session,
    /// Asks ONNX Runtime for the served output and the named ones alone.
    run_options: RunOptions<ort::session::HasSelectedOutputs>,
    feeds: Vec<Feed>,
    /// Elements per input of the one numeric input that takes `features`; 0 when the
    /// graph takes its inputs by name only.
    features: usize,
    /// The output read as probabilities or values.
    output: String,
    width: usize,
    softmax: bool,
    /// The outputs returned by name (`ModelInfo.outputs`).
    named: Vec<String>,
}

impl OnnxModel {
    /// The graph's inputs for a batch: one tensor per feed, joined from every input's.
    fn batch(&self, inputs: &[ModelInput]) -> anyhow::Result<Vec<pb::Tensor>> {
        let n = inputs.len();
        if let Some(ModelInput::Tensors(_)) = inputs.first() {
            return (0..self.feeds.len())
                .map(|f| {
                    let parts = inputs.iter().map(|input| match input {
                        ModelInput::Tensors(t) => t.get(f),
                        _ => None,
                    });
                    parts
                        .collect::<Option<Vec<_>>>()
                        .and_then(tensor::concat)
                        .with_context(|| {
                            format!("the inputs of {:?} do not join", self.feeds[f].info.name)
                        })
                })
                .collect();
        }
        let [feed] = self.feeds.as_slice() else {
            bail!("this model takes named inputs, not features");
        };
        let flat = feature_matrix(inputs, self.features)?;
        let shape = std::iter::once(n as i64)
            .chain(feed.info.shape.iter().skip(1).copied())
            .collect();
        Ok(vec![cast_features(
            &feed.info.name,
            feed.datatype,
            shape,
            &flat,
        )])
    }
}

impl Model for OnnxModel {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Output>> {
        let n = inputs.len();
        let feeds = self.batch(inputs)?;
        let values = feeds
            .iter()
            .zip(&self.feeds)
            .map(|(t, feed)| Ok((feed.info.name.clone(), values::to_ort(t)?)))
            .collect::<anyhow::Result<Vec<(String, DynValue)>>>()?;
        let outputs = self.session.run_with_options(values, &self.run_options)?;
        let flat = read_output(&outputs, &self.output)?;
        if flat.len() != n * self.width {
            bail!(
                "the model gave {} numbers for {n} inputs of width {}",
                flat.len(),
                self.width
            );
        }
        let rows = output_rows(&flat, n, self.softmax)?;
        let mut named: Vec<std::vec::IntoIter<pb::Tensor>> = Vec::new();
        for name in &self.named {
            let value = outputs
                .get(name.as_str())
                .with_context(|| format!("ONNX Runtime gave no output {name:?}"))?;
            let t = values::from_ort(name, value)?;
            if t.shape.first() != Some(&(n as i64)) {
                bail!("output {name:?} has shape {:?} for {n} inputs", t.shape);
            }
            named.push(tensor::split(t, n).into_iter());
        }
        Ok(rows
            .into_iter()
            .map(|row| Output {
                row,
                tensors: named.iter_mut().filter_map(Iterator::next).collect(),
            })
            .collect())
    }
}

/// Features (f32, row-major) as a tensor of `datatype`, converted as a cast in the graph
/// would: integers truncated toward zero, booleans true when non-zero.
fn cast_features(name: &str, datatype: DataType, shape: Vec<i64>, flat: &[f32]) -> pb::Tensor {
    let mut raw = Vec::with_capacity(flat.len() * datatype.width().unwrap_or(4));
    for &x in flat {
        match datatype {
            DataType::Bool => raw.push(u8::from(x != 0.0)),
            DataType::U8 => raw.push(x as u8),
            DataType::I8 => raw.extend((x as i8).to_le_bytes()),
            DataType::U16 => raw.extend((x as u16).to_le_bytes()),
            DataType::I16 => raw.extend((x as i16).to_le_bytes()),
            DataType::U32 => raw.extend((x as u32).to_le_bytes()),
            DataType::I32 => raw.extend((x as i32).to_le_bytes()),
            DataType::U64 => raw.extend((x as u64).to_le_bytes()),
            DataType::I64 => raw.extend((x as i64).to_le_bytes()),
            DataType::F16 => raw.extend(half::f16::from_f32(x).to_le_bytes()),
            DataType::F64 => raw.extend(f64::from(x).to_le_bytes()),
            DataType::F32 | DataType::Bytes => raw.extend(x.to_le_bytes()),
        }
    }
    pb::Tensor {
        name: name.to_string(),
        datatype: datatype.name().into(),
        shape,
        raw_contents: raw,
        bytes_contents: Vec::new(),
    }
}

/// What loading found in the graph.
struct Plan {
    feeds: Vec<Feed>,
    /// Elements per input when the graph takes `features` (see [`OnnxModel::features`]).
    features: usize,
    output: String,
    /// Set when the output is a value inside the graph, not one of its declared outputs:
    /// its ONNX element type (as the exporter recorded it, else float).
    internal: Option<i32>,
    labels: Option<Vec<String>>,
    task: Option<ModelTask>,
    /// The operator that names the model (`TreeEnsembleClassifier`, …), if any.
    main_op: Option<String>,
    /// The declared tensor outputs, returned by name.
    named: Vec<TensorInfo>,
}

/// A tensor value's name, element type and shape as `ModelInfo` lists them: the first
/// dimension counts the inputs, `-1` where the graph leaves a size open.
fn declared(value: &ValueInfoProto) -> Option<(DataType, TensorInfo)> {
    let (elem, dims) = value.tensor()?;
    let datatype = graph::datatype(elem)?;
    let shape = std::iter::once(-1)
        .chain(dims.iter().skip(1).map(|d| d.unwrap_or(-1)))
        .collect();
    Some((
        datatype,
        TensorInfo {
            name: value.name.clone(),
            datatype: datatype.name().into(),
            shape,
        },
    ))
}

/// The graph's inputs: tensors of a served element type, the first dimension the batch.
fn feeds(graph: &GraphProto) -> anyhow::Result<Vec<Feed>> {
    let inputs = graph.fed_inputs();
    if inputs.is_empty() {
        bail!("the graph takes no inputs");
    }
    inputs
        .into_iter()
        .map(|input| {
            let Some((elem, dims)) = input.tensor() else {
                bail!("input {:?} is not a tensor", input.name);
            };
            let Some((datatype, info)) = declared(input) else {
                bail!(
                    "input {:?} has ONNX element type {elem}, which is not served ({})",
                    input.name,
                    DataType::names()
                );
            };
            if dims.is_empty() {
                bail!(
                    "input {:?} is a scalar; every input's first dimension must count the inputs",
                    input.name
                );
            }
            let fixed: Vec<usize> = info.shape[1..]
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(1))
                .collect();
            let elements = fixed.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if elements.is_none_or(|n| n > tensor::MAX_ELEMENTS) {
                bail!("input {:?} has shape {dims:?}: too large", input.name);
            }
            Ok(Feed { info, datatype })
        })
        .collect()
}

const CLASSIFIERS: [&str; 2] = [
    "ai.onnx.ml:TreeEnsembleClassifier",
    "ai.onnx.ml:LinearClassifier",
];
const REGRESSORS: [&str; 2] = [
    "ai.onnx.ml:TreeEnsembleRegressor",
    "ai.onnx.ml:LinearRegressor",
];

fn plan(graph: &GraphProto, settings: &OnnxSettings) -> anyhow::Result<Plan> {
    let feeds = feeds(graph)?;
    // One numeric input with every dimension but the batch fixed also takes `features`:
    // its elements in row-major order ([batch, features], or an image [batch, c, h, w]).
    let features = match feeds.as_slice() {
        [feed]
            if feed.datatype != DataType::Bytes && feed.info.shape[1..].iter().all(|&d| d > 0) =>
        {
            feed.info.shape[1..].iter().product::<i64>() as usize
        }
        _ => 0,
    };

    // Which node (by index) computes each value.
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let zipmap = graph
        .node
        .iter()
        .find(|n| n.op_key() == "ai.onnx.ml:ZipMap");
    // The served output, and labels the graph gives for it.
    let (output, mut labels) = if let Some(name) = &settings.output {
        (name.clone(), None)
    } else if let Some(zipmap) = zipmap {
        let from = zipmap.input.first().context("ZipMap without input")?;
        (from.clone(), Some(zipmap.class_labels()))
    } else {
        let floats: Vec<&str> = graph
            .output
            .iter()
            .filter(|o| o.tensor().is_some_and(|(t, _)| t == FLOAT || t == DOUBLE))
            .map(|o| o.name.as_str())
            .collect();
        let Some(last) = floats.last() else {
            bail!("the graph has no float tensor output to serve");
        };
        (last.to_string(), None)
    };
    if !producer.contains_key(output.as_str()) {
        bail!("no node computes the output {output:?}");
    }

    // The nodes the output needs.
    let mut needed: HashSet<usize> = HashSet::new();
    let mut stack = vec![output.as_str()];
    while let Some(name) = stack.pop() {
        if let Some(&i) = producer.get(name)
            && needed.insert(i)
        {
            stack.extend(graph.node[i].input.iter().map(String::as_str));
        }
    }
    let nodes: Vec<&NodeProto> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| needed.contains(i))
        .map(|(_, n)| n)
        .collect();
    let last_of = |ops: &[&str]| {
        nodes
            .iter()
            .rev()
            .find(|n| ops.contains(&n.op_key().as_str()))
            .copied()
    };
    let classifier = last_of(&CLASSIFIERS);
    let regressor = last_of(&REGRESSORS);
    let task = if let Some(classifier) = classifier {
        if labels.is_none() {
            labels = Some(classifier.class_labels());
        }
        Some(ModelTask::Classification)
    } else if regressor.is_some() {
        Some(ModelTask::Regression)
    } else {
        None
    };
    let main_op = classifier.or(regressor).map(|n| n.op_type.clone());
    let internal = (!graph.output.iter().any(|o| o.name == output))
        .then(|| graph.elem_type_of(&output).unwrap_or(FLOAT));
    let named = graph
        .output
        .iter()
        .filter_map(declared)
        .map(|(_, info)| info)
        .collect();
    Ok(Plan {
        feeds,
        features,
        output,
        internal,
        labels,
        task,
        main_op,
        named,
    })
}

/// Loads an ONNX model folder.
pub fn load(
    dir: &Path,
    name: &str,
    version: String,
    opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
    let bytes = std::fs::read(dir.join(MODEL_FILE)).context("reading model.onnx")?;
    let graph = graph::read(&bytes)?;
    graph::check_dimensions(&graph)
        .and_then(|()| graph::check_trees(&graph))
        .with_context(|| format!("model {name:?}"))?;
    if dir.join(text::TOKENIZER_FILE).is_file() {
        return text::load(dir, name, version, opts, &bytes, &graph);
    }
    let settings_path = dir.join(SETTINGS_FILE);
    let settings: OnnxSettings = if settings_path.is_file() {
        serde_json::from_str(
            &std::fs::read_to_string(&settings_path)
                .with_context(|| format!("{}", settings_path.display()))?,
        )
        .with_context(|| format!("parsing {}", settings_path.display()))?
    } else {
        OnnxSettings::default()
    };
    let plan = plan(&graph, &settings)?;
    drop(graph);
    let exposed;
    let graph_bytes = match plan.internal {
        Some(elem_type) => {
            exposed = graph::with_outputs(&bytes, &[(plan.output.as_str(), elem_type)]);
            exposed.as_slice()
        }
        None => bytes.as_slice(),
    };
    let mut session = session(graph_bytes, opts).with_context(|| format!("model {name:?}"))?;
    drop(bytes);
    // A first run on two inputs of zeros tells the served output's width and which named
    // outputs split into one part per input (those that do not are not offered).
    let selector = |named: &[TensorInfo]| -> anyhow::Result<_> {
        let mut selector = OutputSelector::no_default().with(plan.output.as_str());
        for t in named.iter().filter(|t| t.name != plan.output) {
            selector = selector.with(t.name.as_str());
        }
        Ok(RunOptions::new()?.with_outputs(selector))
    };
    let specs: Vec<TensorInfo> = plan.feeds.iter().map(|f| f.info.clone()).collect();
    let probe_feeds = zero_inputs(&specs, 2)
        .iter()
        .map(|t| Ok((t.name.clone(), values::to_ort(t)?)))
        .collect::<anyhow::Result<Vec<(String, DynValue)>>>()?;
    let probe_options = selector(&plan.named)?;
    let (width, named) = {
        let outputs = session
            .run_with_options(probe_feeds, &probe_options)
            .with_context(|| format!("model {name:?}: a first run on two inputs of zeros"))?;
        let flat = read_output(&outputs, &plan.output)?;
        let width = flat.len() / 2;
        if width == 0 || flat.len() != 2 * width {
            bail!(
                "model {name:?}: output {:?} gives {} numbers for two inputs",
                plan.output,
                flat.len()
            );
        }
        let named: Vec<TensorInfo> = plan
            .named
            .iter()
            .filter(|t| {
                let splits = outputs
                    .get(t.name.as_str())
                    .and_then(|v| values::from_ort(&t.name, v).ok())
                    .is_some_and(|v| v.shape.first() == Some(&2));
                if !splits {
                    tracing::warn!(model = name, output = %t.name, "output does not have one part per input; not offered by name");
                }
                splits
            })
            .cloned()
            .collect();
        (width, named)
    };
    let model = OnnxModel {
        session,
        run_options: selector(&named)?,
        feeds: plan.feeds.clone(),
        features: plan.features,
        output: plan.output.clone(),
        width,
        softmax: settings.softmax,
        named: named.iter().map(|t| t.name.clone()).collect(),
    };
    let architecture = format!("onnxruntime-{}", plan.main_op.as_deref().unwrap_or("graph"));

    let task = match settings.task.as_deref() {
        Some("classification") => ModelTask::Classification,
        Some("regression") => ModelTask::Regression,
        Some(other) => {
            bail!("{SETTINGS_FILE}: task {other:?} is neither classification nor regression")
        }
        None => plan.task.unwrap_or(if width >= 2 {
            ModelTask::Classification
        } else {
            ModelTask::Regression
        }),
    };
    let labels = match task {
        ModelTask::Regression => Vec::new(),
        _ => {
            let labels = settings
                .labels
                .clone()
                .or(plan.labels)
                .unwrap_or_else(|| (0..width).map(|i| i.to_string()).collect());
            if labels.len() != width {
                bail!(
                    "the served output {:?} has {width} columns but there are {} labels",
                    plan.output,
                    labels.len()
                );
            }
            labels
        }
    };
    if !settings.feature_names.is_empty() && settings.feature_names.len() != plan.features {
        bail!(
            "{SETTINGS_FILE} names {} features; the graph takes {}",
            settings.feature_names.len(),
            plan.features
        );
    }
    let inputs: Vec<TensorInfo> = plan.feeds.iter().map(|f| f.info.clone()).collect();
    Ok(LoadedModel {
        info: ModelInfo {
            name: name.to_string(),
            version,
            kind: ModelKind::Tabular as i32,
            labels,
            feature_count: plan.features as u32,
            architecture,
            task: task as i32,
            input: inputs.first().cloned(),
            value_count: if task == ModelTask::Regression {
                width as u32
            } else {
                0
            },
            inputs,
            outputs: named,
            feature_names: settings.feature_names.clone(),
            ..Default::default()
        },
        model: Box::new(model),
        tokenizer: None,
    })
}
