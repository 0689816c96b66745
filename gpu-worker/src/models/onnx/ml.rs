//! A small interpreter for the classical-ML graphs that skl2onnx and onnxmltools write:
//! the `ai.onnx.ml` operators (tree ensembles, linear models, scaler, normalizer, array
//! feature extractor) and the handful of standard operators that appear beside them.
//!
//! tract runs neural networks well but implements only `TreeEnsembleClassifier` of the ML
//! domain, so graphs holding any ML operator run here instead. Semantics follow the ONNX
//! operator documentation; where it is silent (the two-class tree ensemble with one score
//! column), they follow what the exporters expect of ONNX Runtime and are checked against
//! each framework's own predictions by the fixture tests.

use std::collections::HashMap;

use anyhow::{Context, bail};
use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

/// The values one graph edge can hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// FLOAT and DOUBLE tensors (doubles are narrowed, as the float input is).
    F32(Vec<f32>),
    /// INT64 and INT32 tensors.
    I64(Vec<i64>),
    /// STRING tensors.
    Str(Vec<String>),
}

/// A dense tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Data,
}

impl Value {
    /// A float tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: Data::F32(data),
        }
    }

    fn floats(&self) -> anyhow::Result<&[f32]> {
        match &self.data {
            Data::F32(v) => Ok(v),
            _ => bail!("expected a float tensor"),
        }
    }

    fn ints(&self) -> anyhow::Result<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Ok(v.clone()),
            Data::F32(v) => Ok(v.iter().map(|x| *x as i64).collect()),
            Data::Str(_) => bail!("expected an integer tensor"),
        }
    }

    /// `[rows, columns]` of a rank-2 tensor (a rank-1 tensor is one row).
    fn matrix(&self) -> anyhow::Result<(usize, usize)> {
        match self.shape.as_slice() {
            [n, f] => Ok((*n, *f)),
            [f] => Ok((1, *f)),
            other => bail!("expected a matrix, got shape {other:?}"),
        }
    }
}

/// Reads an initializer or tensor attribute.
pub fn tensor_value(t: &TensorProto) -> anyhow::Result<Value> {
    let shape: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    let data = match t.data_type {
        // FLOAT
        1 => Data::F32(if raw.is_empty() {
            t.float_data.clone()
        } else {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }),
        // DOUBLE
        11 => Data::F32(if raw.is_empty() {
            t.double_data.iter().map(|x| *x as f32).collect()
        } else {
            raw.chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_le_bytes(a) as f32
                })
                .collect()
        }),
        // INT64
        7 => Data::I64(if raw.is_empty() {
            t.int64_data.clone()
        } else {
            raw.chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    i64::from_le_bytes(a)
                })
                .collect()
        }),
        // INT32
        6 => Data::I64(if raw.is_empty() {
            t.int32_data.iter().map(|x| i64::from(*x)).collect()
        } else {
            raw.chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        }),
        // STRING
        8 => Data::Str(
            t.string_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        ),
        other => bail!(
            "tensor {:?} has element type {other}, not supported",
            t.name
        ),
    };
    let len = match &data {
        Data::F32(v) => v.len(),
        Data::I64(v) => v.len(),
        Data::Str(v) => v.len(),
    };
    if len != n {
        bail!(
            "tensor {:?} holds {len} elements for shape {shape:?}",
            t.name
        );
    }
    Ok(Value { shape, data })
}

/// The attributes of one node, by name.
struct Attrs<'a>(HashMap<&'a str, &'a AttributeProto>);

impl<'a> Attrs<'a> {
    fn of(node: &'a NodeProto) -> Self {
        Self(
            node.attribute
                .iter()
                .map(|a| (a.name.as_str(), a))
                .collect(),
        )
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.0.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.0.get(name).map(|a| a.i).unwrap_or(default)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.0.get(name).map(|a| a.f).unwrap_or(default)
    }
    /// A float list, or its `<name>_as_tensor` double form (ai.onnx.ml opset 3).
    fn floats(&self, name: &str) -> anyhow::Result<Vec<f32>> {
        if let Some(a) = self.0.get(name) {
            return Ok(a.floats.clone());
        }
        if let Some(t) = self
            .0
            .get(format!("{name}_as_tensor").as_str())
            .and_then(|a| a.t.as_ref())
        {
            return Ok(tensor_value(t)?.floats()?.to_vec());
        }
        Ok(Vec::new())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.0
            .get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The class labels of a classifier node (`classlabels_strings`, `_int64s` or `_ints`).
pub fn class_labels(node: &NodeProto) -> Vec<String> {
    let a = Attrs::of(node);
    let strings = a.strings("classlabels_strings");
    if !strings.is_empty() {
        return strings;
    }
    let ints = a.ints("classlabels_int64s");
    let ints = if ints.is_empty() {
        a.ints("classlabels_ints")
    } else {
        ints
    };
    ints.iter().map(i64::to_string).collect()
}

/// How scores become outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Post {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

fn post_transform(a: &Attrs) -> anyhow::Result<Post> {
    Ok(match a.string("post_transform").as_deref() {
        None | Some("NONE") => Post::None,
        Some("SOFTMAX") => Post::Softmax,
        Some("LOGISTIC") => Post::Logistic,
        Some("SOFTMAX_ZERO") => Post::SoftmaxZero,
        Some("PROBIT") => Post::Probit,
        Some(other) => bail!("unknown post_transform {other:?}"),
    })
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The inverse of the standard normal distribution function (Acklam's rational
/// approximation, relative error below 1.2e-9), for the PROBIT transform.
fn probit(p: f32) -> f32 {
    let p = f64::from(p).clamp(1e-300, 1.0 - 1e-16);
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    x as f32
}

/// Softmax of one row; with `zero`, zero scores stay zero (ONNX-ML's `SOFTMAX_ZERO`).
pub(crate) fn softmax_in_place(row: &mut [f32], zero: bool) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        // SOFTMAX_ZERO leaves zero scores at zero.
        *x = if zero && *x == 0.0 {
            0.0
        } else {
            (*x - max).exp()
        };
        sum += *x;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

fn apply_post(row: &mut [f32], post: Post) {
    match post {
        Post::None => {}
        Post::Logistic => row.iter_mut().for_each(|x| *x = logistic(*x)),
        Post::Softmax => softmax_in_place(row, false),
        Post::SoftmaxZero => softmax_in_place(row, true),
        Post::Probit => row.iter_mut().for_each(|x| *x = probit(*x)),
    }
}

/// A classifier that produced one score for two classes: the second class's score `s`
/// becomes the pair the exporters expect.
fn binary_pair(s: f32, post: Post, weights_all_positive: bool) -> [f32; 2] {
    match post {
        Post::Logistic => [logistic(-s), logistic(s)],
        Post::Probit => [1.0 - probit(s), probit(s)],
        _ if weights_all_positive => [1.0 - s, s],
        _ => {
            let mut pair = [-s, s];
            apply_post(&mut pair, post);
            pair
        }
    }
}

#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Mode {
    Leaf,
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

/// One node, 24 bytes: a walk touches a few per tree and row, so they pack tight.
#[derive(Debug, Clone)]
struct TreeNode {
    threshold: f32,
    feature: u32,
    when_true: u32,
    when_false: u32,
    /// Range into `Trees::leaf_weights` (leaves only).
    weights: (u32, u32),
    mode: Mode,
    missing_true: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// A tree ensemble, flattened: nodes of every tree in one array, children by index.
#[derive(Debug, Clone)]
struct Trees {
    nodes: Vec<TreeNode>,
    roots: Vec<usize>,
    /// (target or class index, weight) of every leaf, grouped per leaf.
    leaf_weights: Vec<(usize, f32)>,
    targets: usize,
    base: Vec<f32>,
    post: Post,
    aggregate: Aggregate,
    features: usize,
}

impl Trees {
    /// Parses the node arrays shared by both tree ensemble operators; `prefix` is
    /// `class` or `target` for the leaf arrays.
    fn parse(node: &NodeProto, prefix: &str, targets: usize) -> anyhow::Result<Self> {
        let a = Attrs::of(node);
        let tree_ids = a.ints("nodes_treeids");
        let node_ids = a.ints("nodes_nodeids");
        let features = a.ints("nodes_featureids");
        let values = a.floats("nodes_values")?;
        let modes = a.strings("nodes_modes");
        let trues = a.ints("nodes_truenodeids");
        let falses = a.ints("nodes_falsenodeids");
        let missing = a.ints("nodes_missing_value_tracks_true");
        let n = tree_ids.len();
        if n == 0 {
            bail!("the ensemble has no nodes");
        }
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_truenodeids", trues.len()),
            ("nodes_falsenodeids", falses.len()),
        ] {
            if len != n {
                bail!("{name} has {len} entries, nodes_treeids {n}");
            }
        }
        if values.len() != n {
            bail!(
                "nodes_values has {} entries, nodes_treeids {n}",
                values.len()
            );
        }
        let index: HashMap<(i64, i64), usize> = tree_ids
            .iter()
            .zip(&node_ids)
            .enumerate()
            .map(|(i, (t, n))| ((*t, *n), i))
            .collect();
        let child = |tree: i64, id: i64| -> anyhow::Result<usize> {
            index
                .get(&(tree, id))
                .copied()
                .with_context(|| format!("tree {tree} refers to missing node {id}"))
        };
        // Leaves: gather (target, weight) per node.
        let leaf_trees = a.ints(&format!("{prefix}_treeids"));
        let leaf_nodes = a.ints(&format!("{prefix}_nodeids"));
        let leaf_ids = a.ints(&format!("{prefix}_ids"));
        let leaf_w = a.floats(&format!("{prefix}_weights"))?;
        if leaf_nodes.len() != leaf_trees.len()
            || leaf_ids.len() != leaf_trees.len()
            || leaf_w.len() != leaf_trees.len()
        {
            bail!("the {prefix}_* arrays differ in length");
        }
        let mut per_node: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n];
        for i in 0..leaf_trees.len() {
            let at = child(leaf_trees[i], leaf_nodes[i])?;
            let target = usize::try_from(leaf_ids[i])
                .ok()
                .filter(|t| *t < targets)
                .with_context(|| format!("{prefix}_ids names {} of {targets}", leaf_ids[i]))?;
            per_node[at].push((target, leaf_w[i]));
        }
        let mut nodes = Vec::with_capacity(n);
        let mut leaf_weights = Vec::new();
        let mut is_child = vec![false; n];
        for i in 0..n {
            let mode = match modes[i].as_str() {
                "LEAF" => Mode::Leaf,
                "BRANCH_LEQ" => Mode::Leq,
                "BRANCH_LT" => Mode::Lt,
                "BRANCH_GTE" => Mode::Gte,
                "BRANCH_GT" => Mode::Gt,
                "BRANCH_EQ" => Mode::Eq,
                "BRANCH_NEQ" => Mode::Neq,
                other => bail!("unknown node mode {other:?}"),
            };
            let (when_true, when_false) = if matches!(mode, Mode::Leaf) {
                (i, i)
            } else {
                let t = child(tree_ids[i], trues[i])?;
                let f = child(tree_ids[i], falses[i])?;
                is_child[t] = true;
                is_child[f] = true;
                (t, f)
            };
            let start = leaf_weights.len();
            leaf_weights.extend_from_slice(&per_node[i]);
            let index = |v: usize| u32::try_from(v).context("the ensemble is too large");
            nodes.push(TreeNode {
                mode,
                feature: u32::try_from(features[i]).context("bad feature id")?,
                threshold: values[i],
                when_true: index(when_true)?,
                when_false: index(when_false)?,
                missing_true: missing.get(i).copied().unwrap_or(0) != 0,
                weights: (index(start)?, index(leaf_weights.len())?),
            });
        }
        let roots: Vec<usize> = (0..n).filter(|i| !is_child[*i]).collect();
        let aggregate = match a.string("aggregate_function").as_deref() {
            None | Some("SUM") => Aggregate::Sum,
            Some("AVERAGE") => Aggregate::Average,
            Some("MIN") => Aggregate::Min,
            Some("MAX") => Aggregate::Max,
            Some(other) => bail!("unknown aggregate_function {other:?}"),
        };
        let features = nodes
            .iter()
            .filter(|n| !matches!(n.mode, Mode::Leaf))
            .map(|n| n.feature as usize + 1)
            .max()
            .unwrap_or(0);
        Ok(Self {
            nodes,
            roots,
            leaf_weights,
            targets,
            base: a.floats("base_values")?,
            post: post_transform(&a)?,
            aggregate,
            features,
        })
    }

    fn leaf(&self, root: usize, row: &[f32]) -> &TreeNode {
        let mut node = &self.nodes[root];
        loop {
            let x = row[node.feature as usize];
            let go_true = match node.mode {
                Mode::Leaf => return node,
                _ if x.is_nan() => node.missing_true,
                Mode::Leq => x <= node.threshold,
                Mode::Lt => x < node.threshold,
                Mode::Gte => x >= node.threshold,
                Mode::Gt => x > node.threshold,
                Mode::Eq => x == node.threshold,
                Mode::Neq => x != node.threshold,
            };
            node = &self.nodes[if go_true {
                node.when_true
            } else {
                node.when_false
            } as usize];
        }
    }

    /// Aggregated raw scores of one row, per target, and which targets any leaf touched.
    fn scores(&self, row: &[f32]) -> (Vec<f32>, Vec<bool>) {
        let init = match self.aggregate {
            Aggregate::Min => f32::INFINITY,
            Aggregate::Max => f32::NEG_INFINITY,
            _ => 0.0,
        };
        let mut scores = vec![init; self.targets];
        let mut touched = vec![false; self.targets];
        for root in &self.roots {
            let leaf = self.leaf(*root, row);
            for (target, w) in &self.leaf_weights[leaf.weights.0 as usize..leaf.weights.1 as usize]
            {
                let s = &mut scores[*target];
                *s = match self.aggregate {
                    Aggregate::Sum | Aggregate::Average => *s + w,
                    Aggregate::Min => s.min(*w),
                    Aggregate::Max => s.max(*w),
                };
                touched[*target] = true;
            }
        }
        for (s, t) in scores.iter_mut().zip(&touched) {
            if !t {
                *s = 0.0;
            } else if self.aggregate == Aggregate::Average {
                *s /= self.roots.len() as f32;
            }
        }
        (scores, touched)
    }
}

/// One compiled operator.
#[derive(Debug, Clone)]
enum Op {
    TreeClassifier {
        trees: Box<Trees>,
        labels: Labels,
        binary: bool,
        weights_all_positive: bool,
    },
    TreeRegressor(Box<Trees>),
    LinearClassifier {
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        classes: usize,
        labels: Labels,
        post: Post,
    },
    LinearRegressor {
        coefficients: Vec<f32>,
        intercepts: Vec<f32>,
        targets: usize,
        post: Post,
    },
    Scaler {
        offset: Vec<f32>,
        scale: Vec<f32>,
    },
    Normalizer(String),
    ArrayFeatureExtractor,
    Identity,
    Cast(i64),
    Binary(fn(f32, f32) -> f32),
    Unary(fn(f32) -> f32),
    MatMul,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Softmax,
    ArgMax {
        keep: bool,
    },
    Reshape,
    Flatten,
    Concat(i64),
}

#[derive(Debug, Clone)]
enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    fn of(node: &NodeProto) -> Self {
        let a = Attrs::of(node);
        let strings = a.strings("classlabels_strings");
        if !strings.is_empty() {
            return Labels::Strings(strings);
        }
        let ints = a.ints("classlabels_int64s");
        Labels::Ints(if ints.is_empty() {
            a.ints("classlabels_ints")
        } else {
            ints
        })
    }
    fn len(&self) -> usize {
        match self {
            Labels::Ints(v) => v.len(),
            Labels::Strings(v) => v.len(),
        }
    }
    fn pick(&self, rows: &[f32], width: usize) -> Value {
        let n = rows.len() / width.max(1);
        let best = (0..n).map(|i| argmax(&rows[i * width..(i + 1) * width]));
        let data = match self {
            Labels::Ints(v) => Data::I64(best.map(|b| v[b]).collect()),
            Labels::Strings(v) => Data::Str(best.map(|b| v[b].clone()).collect()),
        };
        Value {
            shape: vec![n],
            data,
        }
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best
}

/// The operators this interpreter runs, by ONNX domain and name.
pub const SUPPORTED: &[&str] = &[
    "ai.onnx.ml:TreeEnsembleClassifier",
    "ai.onnx.ml:TreeEnsembleRegressor",
    "ai.onnx.ml:LinearClassifier",
    "ai.onnx.ml:LinearRegressor",
    "ai.onnx.ml:Scaler",
    "ai.onnx.ml:Normalizer",
    "ai.onnx.ml:ArrayFeatureExtractor",
    "Identity",
    "Cast",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Abs",
    "Neg",
    "Sqrt",
    "MatMul",
    "Gemm",
    "Softmax",
    "ArgMax",
    "Reshape",
    "Flatten",
    "Concat",
];

/// The `domain:op` key of a node, as in [`SUPPORTED`] (the default domain has no prefix).
pub fn op_key(node: &NodeProto) -> String {
    match node.domain.as_str() {
        "" | "ai.onnx" => node.op_type.clone(),
        domain => format!("{domain}:{}", node.op_type),
    }
}

fn compile(node: &NodeProto) -> anyhow::Result<Op> {
    let a = Attrs::of(node);
    let key = op_key(node);
    Ok(match key.as_str() {
        "ai.onnx.ml:TreeEnsembleClassifier" => {
            let labels = Labels::of(node);
            if labels.len() == 0 {
                bail!("no classlabels_strings or classlabels_int64s");
            }
            let trees = Trees::parse(node, "class", labels.len())?;
            let mut ids: Vec<i64> = a.ints("class_ids");
            ids.sort_unstable();
            ids.dedup();
            let weights_all_positive = a.floats("class_weights")?.iter().all(|w| *w >= 0.0);
            Op::TreeClassifier {
                binary: labels.len() == 2 && ids.len() == 1,
                weights_all_positive,
                trees: Box::new(trees),
                labels,
            }
        }
        "ai.onnx.ml:TreeEnsembleRegressor" => {
            let targets = usize::try_from(a.int("n_targets", 1))
                .ok()
                .filter(|t| *t > 0)
                .context("n_targets must be positive")?;
            Op::TreeRegressor(Box::new(Trees::parse(node, "target", targets)?))
        }
        "ai.onnx.ml:LinearClassifier" => {
            let labels = Labels::of(node);
            let coefficients = a.floats("coefficients")?;
            let intercepts = a.floats("intercepts")?;
            let classes = if intercepts.is_empty() {
                labels.len()
            } else {
                intercepts.len()
            };
            if classes == 0 || coefficients.len() % classes != 0 {
                bail!("coefficients do not split into {classes} classes");
            }
            Op::LinearClassifier {
                coefficients,
                intercepts,
                classes,
                labels,
                post: post_transform(&a)?,
            }
        }
        "ai.onnx.ml:LinearRegressor" => {
            let targets = usize::try_from(a.int("targets", 1)).unwrap_or(1).max(1);
            let coefficients = a.floats("coefficients")?;
            if coefficients.len() % targets != 0 {
                bail!("coefficients do not split into {targets} targets");
            }
            Op::LinearRegressor {
                coefficients,
                intercepts: a.floats("intercepts")?,
                targets,
                post: post_transform(&a)?,
            }
        }
        "ai.onnx.ml:Scaler" => Op::Scaler {
            offset: a.floats("offset")?,
            scale: a.floats("scale")?,
        },
        "ai.onnx.ml:Normalizer" => Op::Normalizer(a.string("norm").unwrap_or_else(|| "MAX".into())),
        "ai.onnx.ml:ArrayFeatureExtractor" => Op::ArrayFeatureExtractor,
        "Identity" => Op::Identity,
        "Cast" => Op::Cast(a.int("to", 1)),
        "Add" => Op::Binary(|x, y| x + y),
        "Sub" => Op::Binary(|x, y| x - y),
        "Mul" => Op::Binary(|x, y| x * y),
        "Div" => Op::Binary(|x, y| x / y),
        "Max" => Op::Binary(f32::max),
        "Min" => Op::Binary(f32::min),
        "Relu" => Op::Unary(|x| x.max(0.0)),
        "Sigmoid" => Op::Unary(logistic),
        "Tanh" => Op::Unary(f32::tanh),
        "Exp" => Op::Unary(f32::exp),
        "Log" => Op::Unary(f32::ln),
        "Abs" => Op::Unary(f32::abs),
        "Neg" => Op::Unary(|x| -x),
        "Sqrt" => Op::Unary(f32::sqrt),
        "MatMul" => Op::MatMul,
        "Gemm" => Op::Gemm {
            alpha: a.float("alpha", 1.0),
            beta: a.float("beta", 1.0),
            trans_a: a.int("transA", 0) != 0,
            trans_b: a.int("transB", 0) != 0,
        },
        "Softmax" => {
            if a.int("axis", -1) != -1 && a.int("axis", -1) != 1 {
                bail!("Softmax is supported over the last axis only");
            }
            Op::Softmax
        }
        "ArgMax" => Op::ArgMax {
            keep: a.int("keepdims", 1) != 0,
        },
        "Reshape" => Op::Reshape,
        "Flatten" => Op::Flatten,
        "Concat" => Op::Concat(a.int("axis", 1)),
        _ => bail!("operator {key} is not supported"),
    })
}

/// A compiled graph: operators in execution order over numbered value slots.
#[derive(Debug, Clone)]
pub struct Program {
    steps: Vec<Step>,
    /// Initializers, by slot.
    constants: Vec<Option<Value>>,
    slots: usize,
    input: usize,
    output: usize,
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
}

impl Program {
    /// Compiles `nodes` (already in topological order, only those the output needs).
    /// `constants` are the initializers by name.
    pub fn compile(
        nodes: &[&NodeProto],
        constants: &HashMap<String, Value>,
        input: &str,
        output: &str,
    ) -> anyhow::Result<Self> {
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let slot = |name: &str, slot_of: &mut HashMap<String, usize>| {
            let next = slot_of.len();
            *slot_of.entry(name.to_string()).or_insert(next)
        };
        let input_slot = slot(input, &mut slot_of);
        let mut steps = Vec::new();
        for node in nodes {
            let op = compile(node)
                .with_context(|| format!("node {:?} ({})", node.name, op_key(node)))?;
            let inputs = node
                .input
                .iter()
                .map(|n| (!n.is_empty()).then(|| slot(n, &mut slot_of)))
                .collect();
            let outputs = node
                .output
                .iter()
                .map(|n| (!n.is_empty()).then(|| slot(n, &mut slot_of)))
                .collect();
            steps.push(Step {
                op,
                inputs,
                outputs,
            });
        }
        let output_slot = *slot_of
            .get(output)
            .with_context(|| format!("output {output:?} is not computed"))?;
        let mut constant_slots = vec![None; slot_of.len()];
        for (name, slot) in &slot_of {
            if let Some(value) = constants.get(name) {
                constant_slots[*slot] = Some(value.clone());
            }
        }
        Ok(Self {
            steps,
            constants: constant_slots,
            slots: slot_of.len(),
            input: input_slot,
            output: output_slot,
        })
    }

    /// Runs the graph on a `[rows, features]` float input; returns the output tensor.
    /// Initializers are read in place, never copied per call.
    pub fn run(&self, input: Value) -> anyhow::Result<Value> {
        let mut values: Vec<Option<Value>> = vec![None; self.slots];
        values[self.input] = Some(input);
        for step in &self.steps {
            let outs = {
                let args: Vec<Option<&Value>> = step
                    .inputs
                    .iter()
                    .map(|s| s.and_then(|s| values[s].as_ref().or(self.constants[s].as_ref())))
                    .collect();
                eval(&step.op, &args)?
            };
            for (slot, value) in step.outputs.iter().zip(outs) {
                if let Some(slot) = slot {
                    values[*slot] = Some(value);
                }
            }
        }
        values[self.output]
            .take()
            .context("the graph did not compute its output")
    }
}

fn arg<'a>(args: &[Option<&'a Value>], i: usize) -> anyhow::Result<&'a Value> {
    args.get(i)
        .copied()
        .flatten()
        .with_context(|| format!("input {i} is missing"))
}

fn matrix_rows(x: &Value, width: usize) -> anyhow::Result<(usize, &[f32])> {
    let (n, f) = x.matrix()?;
    if f < width {
        bail!("expected at least {width} features per row, got {f}");
    }
    Ok((n, x.floats()?))
}

/// Rows at or above which a tree ensemble spreads rows over every core.
const PARALLEL_ROWS: usize = 64;

/// `f` of every `f`-wide row of `data`, concatenated in row order; on every core (rayon)
/// for batches of [`PARALLEL_ROWS`] or more, where one walk per tree and row dominates.
fn per_row(
    data: &[f32],
    n: usize,
    width: usize,
    f: impl Fn(&[f32]) -> Vec<f32> + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let rows = data.chunks_exact(width.max(1)).take(n);
    if n >= PARALLEL_ROWS {
        let rows: Vec<&[f32]> = rows.collect();
        rows.par_iter().flat_map_iter(|r| f(r)).collect()
    } else {
        rows.flat_map(f).collect()
    }
}

fn eval(op: &Op, args: &[Option<&Value>]) -> anyhow::Result<Vec<Value>> {
    let x = arg(args, 0)?;
    Ok(match op {
        Op::TreeClassifier {
            trees,
            labels,
            binary,
            weights_all_positive,
        } => {
            let (n, f) = x.matrix()?;
            let (_, data) = matrix_rows(x, trees.features)?;
            let classes = labels.len();
            let out = per_row(data, n, f, |row| {
                let (mut scores, _) = trees.scores(row);
                if *binary {
                    let s = scores.iter().sum::<f32>() + trees.base.last().copied().unwrap_or(0.0);
                    binary_pair(s, trees.post, *weights_all_positive).to_vec()
                } else {
                    for (s, b) in scores.iter_mut().zip(&trees.base) {
                        *s += b;
                    }
                    apply_post(&mut scores, trees.post);
                    scores
                }
            });
            vec![
                labels.pick(&out, classes),
                Value::f32(vec![n, classes], out),
            ]
        }
        Op::TreeRegressor(trees) => {
            let (n, f) = x.matrix()?;
            let (_, data) = matrix_rows(x, trees.features)?;
            let out = per_row(data, n, f, |row| {
                let (mut scores, _) = trees.scores(row);
                for (s, b) in scores.iter_mut().zip(&trees.base) {
                    *s += b;
                }
                apply_post(&mut scores, trees.post);
                scores
            });
            vec![Value::f32(vec![n, trees.targets], out)]
        }
        Op::LinearClassifier {
            coefficients,
            intercepts,
            classes,
            labels,
            post,
        } => {
            let (n, f) = x.matrix()?;
            let width = coefficients.len() / classes;
            if width != f {
                bail!("the model has {width} coefficients per class, the input {f} features");
            }
            let data = x.floats()?;
            let single = *classes == 1 && labels.len() == 2;
            let out_width = if single { 2 } else { *classes };
            let mut out = Vec::with_capacity(n * out_width);
            for row in data.chunks_exact(f.max(1)).take(n) {
                let mut scores = linear(coefficients, intercepts, *classes, row);
                if single {
                    out.extend(binary_pair(scores[0], *post, false));
                } else {
                    apply_post(&mut scores, *post);
                    out.extend(scores);
                }
            }
            vec![
                labels.pick(&out, out_width),
                Value::f32(vec![n, out_width], out),
            ]
        }
        Op::LinearRegressor {
            coefficients,
            intercepts,
            targets,
            post,
        } => {
            let (n, f) = x.matrix()?;
            let width = coefficients.len() / targets;
            if width != f {
                bail!("the model has {width} coefficients per target, the input {f} features");
            }
            let data = x.floats()?;
            let mut out = Vec::with_capacity(n * targets);
            for row in data.chunks_exact(f.max(1)).take(n) {
                let mut scores = linear(coefficients, intercepts, *targets, row);
                apply_post(&mut scores, *post);
                out.extend(scores);
            }
            vec![Value::f32(vec![n, *targets], out)]
        }
        Op::Scaler { offset, scale } => {
            let (_, f) = x.matrix()?;
            let pick = |v: &[f32], j: usize, default: f32| match v.len() {
                0 => default,
                1 => v[0],
                _ => v[j],
            };
            for v in [offset, scale] {
                if v.len() > 1 && v.len() != f {
                    bail!("Scaler has {} values for {f} features", v.len());
                }
            }
            let data = x
                .floats()?
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let j = i % f.max(1);
                    (v - pick(offset, j, 0.0)) * pick(scale, j, 1.0)
                })
                .collect();
            vec![Value::f32(x.shape.clone(), data)]
        }
        Op::Normalizer(norm) => {
            let (_, f) = x.matrix()?;
            let mut data = x.floats()?.to_vec();
            for row in data.chunks_mut(f.max(1)) {
                let d = match norm.as_str() {
                    "MAX" => row.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    "L1" => row.iter().map(|v| v.abs()).sum(),
                    "L2" => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
                    other => bail!("unknown norm {other:?}"),
                };
                if d != 0.0 {
                    row.iter_mut().for_each(|v| *v /= d);
                }
            }
            vec![Value::f32(x.shape.clone(), data)]
        }
        Op::ArrayFeatureExtractor => {
            let indices = arg(args, 1)?.ints()?;
            let f = *x.shape.last().context("a scalar has no features")?;
            let outer = x.shape.iter().product::<usize>() / f.max(1);
            let idx: Vec<usize> = indices
                .iter()
                .map(|i| usize::try_from(*i).ok().filter(|i| *i < f))
                .collect::<Option<_>>()
                .context("ArrayFeatureExtractor index out of range")?;
            let mut shape = x.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = idx.len();
            }
            let gather = |r: usize, j: &usize| r * f + j;
            let data = match &x.data {
                Data::F32(v) => Data::F32(
                    (0..outer)
                        .flat_map(|r| idx.iter().map(move |j| v[gather(r, j)]))
                        .collect(),
                ),
                Data::I64(v) => Data::I64(
                    (0..outer)
                        .flat_map(|r| idx.iter().map(move |j| v[gather(r, j)]))
                        .collect(),
                ),
                Data::Str(v) => Data::Str(
                    (0..outer)
                        .flat_map(|r| idx.iter().map(move |j| v[gather(r, j)].clone()))
                        .collect(),
                ),
            };
            vec![Value { shape, data }]
        }
        Op::Identity => vec![x.clone()],
        Op::Cast(to) => {
            let data = match (to, &x.data) {
                // FLOAT, DOUBLE
                (1 | 11, Data::F32(v)) => Data::F32(v.clone()),
                (1 | 11, Data::I64(v)) => Data::F32(v.iter().map(|i| *i as f32).collect()),
                // INT64, INT32
                (6 | 7, Data::F32(v)) => Data::I64(v.iter().map(|f| *f as i64).collect()),
                (6 | 7, Data::I64(v)) => Data::I64(v.clone()),
                (8, Data::Str(v)) => Data::Str(v.clone()),
                (8, Data::I64(v)) => Data::Str(v.iter().map(i64::to_string).collect()),
                (to, _) => bail!("Cast to element type {to} is not supported"),
            };
            vec![Value {
                shape: x.shape.clone(),
                data,
            }]
        }
        Op::Binary(f) => vec![broadcast(x, arg(args, 1)?, *f)?],
        Op::Unary(f) => vec![Value::f32(
            x.shape.clone(),
            x.floats()?.iter().map(|v| f(*v)).collect(),
        )],
        Op::MatMul => vec![gemm(x, arg(args, 1)?, None, 1.0, 0.0, false, false)?],
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => vec![gemm(
            x,
            arg(args, 1)?,
            args.get(2).copied().flatten(),
            *alpha,
            *beta,
            *trans_a,
            *trans_b,
        )?],
        Op::Softmax => {
            let f = *x.shape.last().context("Softmax of a scalar")?;
            let mut data = x.floats()?.to_vec();
            data.chunks_mut(f.max(1))
                .for_each(|row| softmax_in_place(row, false));
            vec![Value::f32(x.shape.clone(), data)]
        }
        Op::ArgMax { keep } => {
            let (n, f) = x.matrix()?;
            let data = x.floats()?;
            let best = (0..n)
                .map(|i| argmax(&data[i * f..(i + 1) * f]) as i64)
                .collect();
            vec![Value {
                shape: if *keep { vec![n, 1] } else { vec![n] },
                data: Data::I64(best),
            }]
        }
        Op::Reshape => {
            let wanted = arg(args, 1)?.ints()?;
            let total: usize = x.shape.iter().product();
            let mut shape = Vec::with_capacity(wanted.len());
            let mut infer = None;
            for (i, d) in wanted.iter().enumerate() {
                match d {
                    -1 => {
                        infer = Some(i);
                        shape.push(1);
                    }
                    0 => shape.push(*x.shape.get(i).context("Reshape 0 past the rank")?),
                    d => shape.push(usize::try_from(*d).context("negative Reshape size")?),
                }
            }
            if let Some(i) = infer {
                let known: usize = shape.iter().product();
                shape[i] = total / known.max(1);
            }
            if shape.iter().product::<usize>() != total {
                bail!("cannot reshape {:?} into {wanted:?}", x.shape);
            }
            vec![Value {
                shape,
                data: x.data.clone(),
            }]
        }
        Op::Flatten => {
            let n = x.shape.first().copied().unwrap_or(1);
            let total: usize = x.shape.iter().product();
            vec![Value {
                shape: vec![n, total / n.max(1)],
                data: x.data.clone(),
            }]
        }
        Op::Concat(axis) => {
            let parts: Vec<&Value> = args.iter().filter_map(|a| *a).collect();
            if *axis != 1 && *axis != -1 {
                bail!("Concat is supported along the feature axis only");
            }
            let n = x.matrix()?.0;
            let widths: Vec<usize> = parts
                .iter()
                .map(|p| p.matrix().map(|(_, f)| f))
                .collect::<anyhow::Result<_>>()?;
            let mut out = Vec::new();
            for r in 0..n {
                for (p, w) in parts.iter().zip(&widths) {
                    out.extend_from_slice(&p.floats()?[r * w..(r + 1) * w]);
                }
            }
            vec![Value::f32(vec![n, widths.iter().sum()], out)]
        }
    })
}

/// `outputs` scores `row · coefficients[o] + intercepts[o]` (coefficients row-major,
/// one row per output; a missing intercept is 0).
fn linear(coefficients: &[f32], intercepts: &[f32], outputs: usize, row: &[f32]) -> Vec<f32> {
    coefficients
        .chunks_exact(row.len().max(1))
        .take(outputs)
        .enumerate()
        .map(|(o, w)| {
            let dot: f32 = w.iter().zip(row).map(|(a, b)| a * b).sum();
            dot + intercepts.get(o).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Element-wise `f(a, b)` with numpy broadcasting.
fn broadcast(a: &Value, b: &Value, f: fn(f32, f32) -> f32) -> anyhow::Result<Value> {
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| {
        let mut p = vec![1; rank - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (x, y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            (x, y) if x == y => *x,
            (1, y) => *y,
            (x, 1) => *x,
            _ => bail!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape),
        });
    }
    let strides = |s: &[usize]| {
        let mut st = vec![0; rank];
        let mut acc = 1;
        for i in (0..rank).rev() {
            st[i] = if s[i] == 1 { 0 } else { acc };
            acc *= s[i];
        }
        st
    };
    let (ta, tb) = (strides(&sa), strides(&sb));
    let (da, db) = (a.floats()?, b.floats()?);
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut index = vec![0usize; rank];
    for _ in 0..total {
        let ia: usize = index.iter().zip(&ta).map(|(i, s)| i * s).sum();
        let ib: usize = index.iter().zip(&tb).map(|(i, s)| i * s).sum();
        out.push(f(da[ia], db[ib]));
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(Value::f32(shape, out))
}

/// `alpha * op(a) @ op(b) + beta * c`, rank 2.
fn gemm(
    a: &Value,
    b: &Value,
    c: Option<&Value>,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> anyhow::Result<Value> {
    let (ar, ac) = a.matrix()?;
    let (br, bc) = match b.shape.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        other => bail!("MatMul of shape {other:?} is not supported"),
    };
    let (n, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, m) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        bail!(
            "MatMul of {:?} and {:?}: inner sizes differ",
            a.shape,
            b.shape
        );
    }
    let (da, db) = (a.floats()?, b.floats()?);
    let at = |i: usize, p: usize| {
        if trans_a {
            da[p * ac + i]
        } else {
            da[i * ac + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if trans_b {
            db[j * bc + p]
        } else {
            db[p * bc + j]
        }
    };
    let mut out = vec![0.0f32; n * m];
    for i in 0..n {
        for p in 0..k {
            let x = at(i, p);
            for j in 0..m {
                out[i * m + j] += x * bt(p, j);
            }
        }
    }
    out.iter_mut().for_each(|v| *v *= alpha);
    let mut result = Value::f32(vec![n, m], out);
    if let Some(c) = c
        && beta != 0.0
    {
        let scaled = Value::f32(
            c.shape.clone(),
            c.floats()?.iter().map(|v| v * beta).collect(),
        );
        result = broadcast(&result, &scaled, |x, y| x + y)?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = Value::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Value::f32(vec![3], vec![10.0, 20.0, 30.0]);
        let c = broadcast(&a, &b, |x, y| x + y).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.data, Data::F32(vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]));
        let col = Value::f32(vec![2, 1], vec![1.0, 2.0]);
        let d = broadcast(&a, &col, |x, y| x * y).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.data, Data::F32(vec![1.0, 2.0, 3.0, 8.0, 10.0, 12.0]));
        assert!(broadcast(&a, &Value::f32(vec![2], vec![1.0, 2.0]), |x, y| x + y).is_err());
    }

    #[test]
    fn gemm_transposes_and_adds() {
        let a = Value::f32(vec![1, 2], vec![1.0, 2.0]);
        // b is stored [out=2, in=2] and used transposed.
        let b = Value::f32(vec![2, 2], vec![1.0, 0.0, 3.0, 4.0]);
        let c = Value::f32(vec![2], vec![0.5, 0.5]);
        let y = gemm(&a, &b, Some(&c), 1.0, 1.0, false, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(y.data, Data::F32(vec![1.5, 11.5]));
    }

    #[test]
    fn probit_inverts_the_normal_distribution() {
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.975) - 1.959_964).abs() < 1e-4);
        assert!((probit(0.001) + 3.090_232).abs() < 1e-4);
    }
}
