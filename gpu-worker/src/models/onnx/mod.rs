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
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, TensorInfo};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{DynValue, Tensor};
use serde::Deserialize;

use self::graph::{DOUBLE, FLOAT, GraphProto, INT64, NodeProto};
use self::session::{output_rows, read_output, session};
use super::model::{LoadOptions, LoadedModel, Model, ModelInput, feature_matrix};

pub mod graph;
pub mod runtime;
pub mod session;
pub mod text;

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

/// The element type the graph's input takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum InputType {
    F32,
    F64,
    I64,
}

/// A loaded ONNX graph behind the [`Model`] trait.
pub struct OnnxModel {
    session: Session,
    /// Asks ONNX Runtime for the served output alone.
    run_options: RunOptions<ort::session::HasSelectedOutputs>,
    input: String,
    input_type: InputType,
    features: usize,
    /// `[batch, …]` with the batch left 0, filled per run.
    shape: Vec<usize>,
    output: String,
    width: usize,
    softmax: bool,
}

impl OnnxModel {
    /// The served output of one run over `n` rows of features, row-major.
    fn run(&mut self, flat: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        let mut shape = self.shape.clone();
        shape[0] = n;
        let value: DynValue = match self.input_type {
            InputType::F32 => Tensor::from_array((shape, flat))?.into_dyn(),
            InputType::F64 => {
                let data: Vec<f64> = flat.into_iter().map(f64::from).collect();
                Tensor::from_array((shape, data))?.into_dyn()
            }
            InputType::I64 => {
                // Truncated toward zero, as a cast in the graph would.
                let data: Vec<i64> = flat.into_iter().map(|x| x as i64).collect();
                Tensor::from_array((shape, data))?.into_dyn()
            }
        };
        let outputs = self.session.run_with_options(
            ort::inputs![self.input.as_str() => value],
            &self.run_options,
        )?;
        read_output(&outputs, &self.output)
    }
}

impl Model for OnnxModel {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        let flat = feature_matrix(inputs, self.features)?;
        let n = inputs.len();
        let out = self.run(flat, n)?;
        if out.len() != n * self.width {
            bail!(
                "the model gave {} numbers for {n} inputs of width {}",
                out.len(),
                self.width
            );
        }
        output_rows(&out, n, self.softmax)
    }
}

/// What loading found in the graph.
struct Plan {
    input: String,
    input_type: i32,
    features: usize,
    /// The input's dimensions after the batch.
    item_dims: Vec<usize>,
    output: String,
    /// Set when the output is a value inside the graph, not one of its declared outputs:
    /// its ONNX element type (as the exporter recorded it, else float).
    internal: Option<i32>,
    labels: Option<Vec<String>>,
    task: Option<ModelTask>,
    /// The operator that names the model (`TreeEnsembleClassifier`, …), if any.
    main_op: Option<String>,
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
    let inputs = graph.fed_inputs();
    let [input] = inputs.as_slice() else {
        bail!(
            "the graph takes {} inputs ({}); only models with one tensor input of shape \
             [batch, features] are served",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let (input_type, dims) = input
        .tensor()
        .with_context(|| format!("input {:?} is not a tensor", input.name))?;
    if ![FLOAT, DOUBLE, INT64].contains(&input_type) {
        bail!(
            "input {:?} has ONNX element type {input_type}; float, double and int64 inputs \
             are served",
            input.name
        );
    }
    // [batch, features], or [batch, d1, d2, …] (an image: [batch, channels, height,
    // width]) fed from its elements in row-major order; every dimension but the batch fixed.
    let fixed: Option<Vec<usize>> = dims
        .iter()
        .skip(1)
        .map(|d| d.and_then(|d| usize::try_from(d).ok()))
        .collect();
    let (Some(item_dims), true) = (fixed, dims.len() >= 2) else {
        bail!(
            "input {:?} has shape {dims:?}; expected [batch, features] or [batch, d1, …] with \
             every dimension but the first fixed",
            input.name
        );
    };
    let features = item_dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n > 0 && n <= 1 << 24)
        .with_context(|| format!("input {:?} has shape {dims:?}: too large", input.name))?;

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
    Ok(Plan {
        input: input.name.clone(),
        input_type,
        features,
        item_dims,
        output,
        internal,
        labels,
        task,
        main_op,
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
    let session = session(graph_bytes, opts).with_context(|| format!("model {name:?}"))?;
    drop(bytes);
    let input_type = match plan.input_type {
        DOUBLE => InputType::F64,
        INT64 => InputType::I64,
        _ => InputType::F32,
    };
    let mut model = OnnxModel {
        session,
        run_options: RunOptions::new()?
            .with_outputs(OutputSelector::no_default().with(plan.output.as_str())),
        input: plan.input.clone(),
        input_type,
        features: plan.features,
        shape: std::iter::once(0)
            .chain(plan.item_dims.iter().copied())
            .collect(),
        output: plan.output.clone(),
        width: 0,
        softmax: settings.softmax,
    };
    // One row of zeros tells the output's width (the declared shape may leave it open).
    let probe = model
        .run(vec![0.0; plan.features], 1)
        .with_context(|| format!("model {name:?}: a first run on one row of zeros"))?;
    let width = probe.len();
    if width == 0 {
        bail!(
            "model {name:?}: output {:?} is empty for one row",
            plan.output
        );
    }
    model.width = width;
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
    let datatype = match input_type {
        InputType::F64 => "FP64",
        InputType::I64 => "INT64",
        InputType::F32 => "FP32",
    };
    Ok(LoadedModel {
        info: ModelInfo {
            name: name.to_string(),
            version,
            kind: ModelKind::Tabular as i32,
            labels,
            feature_count: plan.features as u32,
            architecture,
            task: task as i32,
            input: Some(TensorInfo {
                name: plan.input.clone(),
                datatype: datatype.into(),
                shape: std::iter::once(-1)
                    .chain(plan.item_dims.iter().map(|&d| d as i64))
                    .collect(),
            }),
            value_count: if task == ModelTask::Regression {
                width as u32
            } else {
                0
            },
            feature_names: settings.feature_names.clone(),
            ..Default::default()
        },
        model: Box::new(model),
        tokenizer: None,
    })
}
