//! ONNX models, as PyTorch (`torch.onnx`), TensorFlow/Keras (`tf2onnx`), scikit-learn
//! (`skl2onnx`), XGBoost and LightGBM (`onnxmltools`) export them.
//!
//! Folder layout: `model.onnx`, and optionally `model.json` ([`OnnxSettings`]) for labels
//! and settings the graph does not hold. The graph must take one tensor input of shape
//! `[batch, features]` (float, double or int64); the worker feeds it the request's
//! features.
//!
//! Loading picks the output to serve and what it means:
//! - exported classifiers (`ZipMap`, `TreeEnsembleClassifier`, `LinearClassifier`): the
//!   probability tensor, labels from the graph's `classlabels_*`;
//! - exported regressors (`TreeEnsembleRegressor`, `LinearRegressor`): the values;
//! - neural networks: the graph's float output, read as probabilities (or logits, with
//!   `"softmax": true`), labels from `model.json`; a single-column output is a regression.
//!
//! Only the nodes that output needs are kept (the label branch and `ZipMap` go). Graphs
//! that still hold an `ai.onnx.ml` operator run on the interpreter in [`ml`];
//! the others on tract. An operator neither implements fails the load, naming it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, TensorInfo};
use serde::Deserialize;
use tract_onnx::pb::{ModelProto, NodeProto, type_proto};
use tract_onnx::prelude::*;

use self::ml::{Program, Value, op_key, softmax_in_place};
use super::model::{LoadOptions, LoadedModel, Model, ModelInput, feature_matrix};

pub mod ml;

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

/// Which engine runs the graph.
enum Engine {
    /// tract, for graphs of standard operators (neural networks).
    Tract(Box<TypedRunnableModel<TypedModel>>),
    /// The classical-ML interpreter.
    Interpreter(Program),
}

/// A loaded ONNX graph behind the [`Model`] trait.
pub struct OnnxModel {
    engine: Engine,
    features: usize,
    input_type: DatumType,
    width: usize,
    softmax: bool,
}

const ONNX_FLOAT: i32 = 1;
const ONNX_INT64: i32 = 7;
const ONNX_DOUBLE: i32 = 11;

impl Model for OnnxModel {
    fn forward(&mut self, inputs: &[ModelInput]) -> anyhow::Result<Vec<Vec<f32>>> {
        let flat = feature_matrix(inputs, self.features)?;
        let n = inputs.len();
        let out = match &self.engine {
            Engine::Interpreter(program) => {
                let output = program.run(Value::f32(vec![n, self.features], flat))?;
                match output.data {
                    ml::Data::F32(v) => v,
                    _ => bail!("the served output is not a float tensor"),
                }
            }
            Engine::Tract(plan) => {
                let input = tract_ndarray::Array2::from_shape_vec((n, self.features), flat)?;
                let tensor = Tensor::from(input)
                    .cast_to_dt(self.input_type)?
                    .into_owned();
                let outputs = plan.run(tvec!(tensor.into()))?;
                let out = outputs[0].cast_to::<f32>()?;
                out.as_slice::<f32>()?.to_vec()
            }
        };
        if out.len() != n * self.width {
            bail!(
                "the model gave {} numbers for {n} inputs of width {}",
                out.len(),
                self.width
            );
        }
        Ok(out
            .chunks_exact(self.width)
            .map(|row| {
                let mut row = row.to_vec();
                if self.softmax {
                    softmax_in_place(&mut row, false);
                }
                row
            })
            .collect())
    }
}

/// What loading found in the graph.
struct Plan<'a> {
    input: String,
    input_type: i32,
    features: usize,
    output: String,
    nodes: Vec<&'a NodeProto>,
    labels: Option<Vec<String>>,
    task: Option<ModelTask>,
}

/// The element type and dimensions (None where symbolic) of a value declared by the graph.
fn declared(info: &tract_onnx::pb::ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v))
                        if v > 0 =>
                    {
                        Some(v)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((t.elem_type, dims))
}

const CLASSIFIERS: [&str; 2] = [
    "ai.onnx.ml:TreeEnsembleClassifier",
    "ai.onnx.ml:LinearClassifier",
];
const REGRESSORS: [&str; 2] = [
    "ai.onnx.ml:TreeEnsembleRegressor",
    "ai.onnx.ml:LinearRegressor",
];

fn plan<'a>(proto: &'a ModelProto, settings: &OnnxSettings) -> anyhow::Result<Plan<'a>> {
    let graph = proto.graph.as_ref().context("the file holds no graph")?;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
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
    let (input_type, dims) =
        declared(input).with_context(|| format!("input {:?} is not a tensor", input.name))?;
    if ![ONNX_FLOAT, ONNX_DOUBLE, ONNX_INT64].contains(&input_type) {
        bail!(
            "input {:?} has ONNX element type {input_type}; float, double and int64 inputs \
             are served",
            input.name
        );
    }
    let features = match dims.as_slice() {
        [_, Some(f)] => *f as usize,
        _ => bail!(
            "input {:?} has shape {dims:?}; expected [batch, features] with a fixed \
             feature count",
            input.name
        ),
    };

    // Which node (by index) computes each value.
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let zipmap = graph.node.iter().find(|n| op_key(n) == "ai.onnx.ml:ZipMap");
    // The served output, and labels the graph gives for it.
    let (output, mut labels) = if let Some(name) = &settings.output {
        (name.clone(), None)
    } else if let Some(zipmap) = zipmap {
        let from = zipmap.input.first().context("ZipMap without input")?;
        (from.clone(), Some(ml::class_labels(zipmap)))
    } else {
        let floats: Vec<&str> = graph
            .output
            .iter()
            .filter(|o| declared(o).is_some_and(|(t, _)| t == ONNX_FLOAT || t == ONNX_DOUBLE))
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

    // Keep the nodes the output needs, in graph order.
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

    let classifier = nodes
        .iter()
        .rev()
        .find(|n| CLASSIFIERS.contains(&op_key(n).as_str()));
    let regressor = nodes
        .iter()
        .rev()
        .find(|n| REGRESSORS.contains(&op_key(n).as_str()));
    let task = if classifier.is_some() {
        if labels.is_none() {
            labels = classifier.map(|n| ml::class_labels(n));
        }
        Some(ModelTask::Classification)
    } else if regressor.is_some() {
        Some(ModelTask::Regression)
    } else {
        None
    };
    Ok(Plan {
        input: input.name.clone(),
        input_type,
        features,
        output,
        nodes,
        labels,
        task,
    })
}

/// Whether a node belongs to the default ONNX operator set.
fn is_standard(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// The first operator of `nodes` that tract does not implement.
fn unsupported_by_tract(onnx: &tract_onnx::Onnx, nodes: &[&NodeProto]) -> Option<String> {
    nodes
        .iter()
        .find(|n| !is_standard(n) || !onnx.op_register.0.contains_key(&n.op_type))
        .map(|n| op_key(n))
}

fn tract_engine(
    onnx: &tract_onnx::Onnx,
    proto: &ModelProto,
    plan: &Plan,
) -> anyhow::Result<(TypedRunnableModel<TypedModel>, usize)> {
    let mut model = onnx
        .model_for_proto_model(proto)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let batch = model.symbols.sym("batch");
    let dt = match plan.input_type {
        ONNX_DOUBLE => f64::datum_type(),
        ONNX_INT64 => i64::datum_type(),
        _ => f32::datum_type(),
    };
    model
        .set_input_fact(
            0,
            InferenceFact::dt_shape(dt, tvec!(batch.to_dim(), plan.features.to_dim())),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    model
        .set_output_names([plan.output.as_str()])
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let typed = model
        .into_optimized()
        .map_err(|e| anyhow::anyhow!("preparing the graph: {e:?}"))?;
    let fact = typed
        .output_fact(0)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .clone();
    let width = match fact.shape.as_concrete() {
        Some(_) => bail!("output {:?} has a fixed batch size", plan.output),
        None => match fact.shape.dims().iter().as_slice() {
            [_, w] => w
                .to_i64()
                .ok()
                .and_then(|w| usize::try_from(w).ok())
                .with_context(|| format!("output {:?} has no fixed width", plan.output))?,
            [_] => 1,
            other => bail!(
                "output {:?} has shape {other:?}; expected [batch, outputs]",
                plan.output
            ),
        },
    };
    let runnable = typed
        .into_runnable()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((runnable, width))
}

/// Loads an ONNX model folder.
pub fn load(
    dir: &Path,
    name: &str,
    version: String,
    _opts: &LoadOptions,
) -> anyhow::Result<LoadedModel> {
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
    let bytes = std::fs::read(dir.join(MODEL_FILE)).context("reading model.onnx")?;
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_read(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("model.onnx is not an ONNX model: {e}"))?;
    let plan = plan(&proto, &settings)?;

    let ml = plan
        .nodes
        .iter()
        .any(|n| !n.domain.is_empty() && n.domain != "ai.onnx");
    let (engine, width, architecture) = if ml {
        let graph = proto.graph.as_ref().context("no graph")?;
        let constants = graph
            .initializer
            .iter()
            .map(|t| Ok((t.name.clone(), ml::tensor_value(t)?)))
            .collect::<anyhow::Result<HashMap<_, _>>>()?;
        let unsupported: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| op_key(n))
            .filter(|k| !ml::SUPPORTED.contains(&k.as_str()))
            .collect();
        if let Some(op) = unsupported.first() {
            bail!(
                "unsupported operator {op} in model {name:?}: the worker runs these ONNX \
                 operators in classical-ML graphs: {}",
                ml::SUPPORTED.join(", ")
            );
        }
        let program = Program::compile(&plan.nodes, &constants, &plan.input, &plan.output)?;
        // One row of zeros tells the output width.
        let probe = program.run(Value::f32(vec![1, plan.features], vec![0.0; plan.features]))?;
        let width = probe.shape.last().copied().unwrap_or(1);
        let kinds: Vec<String> = plan
            .nodes
            .iter()
            .filter(|n| n.domain == "ai.onnx.ml")
            .map(|n| n.op_type.clone())
            .collect();
        // Named after its model operator; a pipeline of other operators is a "graph".
        let main = kinds
            .iter()
            .find(|k| k.contains("Tree") || k.contains("Linear"))
            .cloned()
            .unwrap_or_else(|| "graph".into());
        (
            Engine::Interpreter(program),
            width,
            format!("onnx-ml-{main}"),
        )
    } else {
        if let Some(op) = unsupported_by_tract(&onnx, &plan.nodes) {
            bail!("unsupported operator {op} in model {name:?}: tract does not implement it");
        }
        let (runnable, width) = tract_engine(&onnx, &proto, &plan)?;
        (
            Engine::Tract(Box::new(runnable)),
            width,
            "onnx-tract".to_string(),
        )
    };

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
    let datatype = match plan.input_type {
        ONNX_DOUBLE => "FP64",
        ONNX_INT64 => "INT64",
        _ => "FP32",
    };
    let input_type = match plan.input_type {
        ONNX_DOUBLE => f64::datum_type(),
        ONNX_INT64 => i64::datum_type(),
        _ => f32::datum_type(),
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
                shape: vec![-1, plan.features as i64],
            }),
            value_count: if task == ModelTask::Regression {
                width as u32
            } else {
                0
            },
            feature_names: settings.feature_names.clone(),
            ..Default::default()
        },
        model: Box::new(OnnxModel {
            engine,
            features: plan.features,
            input_type,
            width,
            softmax: settings.softmax,
        }),
        tokenizer: None,
    })
}
