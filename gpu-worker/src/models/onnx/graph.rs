//! What the worker reads of an ONNX file itself, before ONNX Runtime runs it: the graph's
//! inputs and outputs, its nodes' operators and the class labels classical-ML operators
//! carry. Messages of ONNX's protobuf schema (`onnx.proto`, field numbers from the ONNX IR
//! specification), with only the fields read here; everything else is skipped unparsed
//! (weights included), so reading a large graph costs little.

use inferencehub_proto::DataType;
use prost::Message;

/// `ModelProto`: the file.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// The computation.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// The nodes, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Constant tensors (names only; older exporters list them among the inputs too).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorName>,
    /// Declared inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Declared outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types of intermediate values, where the exporter recorded them.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// `TensorProto`, its name alone.
#[derive(Clone, PartialEq, Message)]
pub struct TensorName {
    /// The tensor's name.
    #[prost(string, tag = "8")]
    pub name: String,
}

/// `NodeProto`: one operator application.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Names of the values it reads.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Names of the values it writes.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// The node's own name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// The operator's attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// The operator set (`""` and `ai.onnx` standard, `ai.onnx.ml` classical ML).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto`, the integer and string forms.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A list of integers.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// A list of strings.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

/// `ValueInfoProto`: a named, typed value.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto`, the tensor case (sequences and maps are left unparsed).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// Set when the value is a tensor.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorType>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorType {
    /// The element type (`TensorProto.DataType`: 1 float, 7 int64, 11 double, …).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// The dimensions, where declared.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShape>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    /// One per axis.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`: a size, a symbol, or neither.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A named dynamic size.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// ONNX element type: float.
pub const FLOAT: i32 = 1;
/// ONNX element type: int32.
pub const INT32: i32 = 6;
/// ONNX element type: int64.
pub const INT64: i32 = 7;
/// ONNX element type: double.
pub const DOUBLE: i32 = 11;

/// The Open Inference Protocol element type of ONNX element type `elem`
/// (`TensorProto.DataType`), where the worker serves it.
pub fn datatype(elem: i32) -> Option<DataType> {
    Some(match elem {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        _ => return None,
    })
}

impl GraphProto {
    /// The element type the exporter recorded for value `name` (an output or an
    /// intermediate value), if it did.
    pub fn elem_type_of(&self, name: &str) -> Option<i32> {
        self.output
            .iter()
            .chain(&self.value_info)
            .find(|v| v.name == name)
            .and_then(|v| v.tensor())
            .map(|(elem, _)| elem)
    }

    /// The inputs a caller feeds: the declared ones that are not constants (older
    /// exporters list every initializer among the inputs too).
    pub fn fed_inputs(&self) -> Vec<&ValueInfoProto> {
        let constants: std::collections::HashSet<&str> =
            self.initializer.iter().map(|t| t.name.as_str()).collect();
        self.input
            .iter()
            .filter(|i| !constants.contains(i.name.as_str()))
            .collect()
    }
}

impl ValueInfoProto {
    /// The element type and dimensions (None where dynamic) of a tensor value.
    pub fn tensor(&self) -> Option<(i32, Vec<Option<i64>>)> {
        let t = self.r#type.as_ref()?.tensor_type.as_ref()?;
        let dims = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| d.dim_value.filter(|&v| v > 0))
                    .collect()
            })
            .unwrap_or_default();
        Some((t.elem_type, dims))
    }
}

impl NodeProto {
    /// `op_type` qualified by its domain when that is not the standard one
    /// (`ai.onnx.ml:TreeEnsembleClassifier`).
    pub fn op_key(&self) -> String {
        match self.domain.as_str() {
            "" | "ai.onnx" => self.op_type.clone(),
            domain => format!("{domain}:{}", self.op_type),
        }
    }

    fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    /// The class labels of a classical-ML classifier or `ZipMap`, as strings
    /// (`classlabels_strings`, else the integer labels written out).
    pub fn class_labels(&self) -> Vec<String> {
        if let Some(a) = self
            .attribute("classlabels_strings")
            .filter(|a| !a.strings.is_empty())
        {
            return a
                .strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
        }
        ["classlabels_int64s", "classlabels_ints"]
            .iter()
            .filter_map(|n| self.attribute(n))
            .find(|a| !a.ints.is_empty())
            .map(|a| a.ints.iter().map(i64::to_string).collect())
            .unwrap_or_default()
    }
}

/// Reads the parts of an ONNX file the worker needs.
pub fn read(bytes: &[u8]) -> anyhow::Result<GraphProto> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| anyhow::anyhow!("model.onnx is not an ONNX model: {e}"))?;
    model
        .graph
        .ok_or_else(|| anyhow::anyhow!("model.onnx holds no graph"))
}

/// `bytes` with `outputs` (tensors: name and ONNX element type) added to the graph's
/// outputs, so ONNX Runtime can hand out a value the exporter left inside the graph (the
/// probabilities in front of a `ZipMap`). Protobuf merges a message that appears twice and
/// appends to its repeated fields, so the addition is a second, small `ModelProto` written
/// after the first.
pub fn with_outputs(bytes: &[u8], outputs: &[(&str, i32)]) -> Vec<u8> {
    let extra = ModelProto {
        graph: Some(GraphProto {
            output: outputs
                .iter()
                .map(|&(name, elem_type)| ValueInfoProto {
                    name: name.to_string(),
                    r#type: Some(TypeProto {
                        tensor_type: Some(TensorType {
                            elem_type,
                            shape: None,
                        }),
                    }),
                })
                .collect(),
            ..Default::default()
        }),
    };
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(bytes);
    extra
        .encode(&mut out)
        .unwrap_or_else(|_| unreachable!("a Vec grows"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_appended_model_adds_outputs_and_keeps_the_rest() {
        let first = ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: "Relu".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    r#type: None,
                }],
                ..Default::default()
            }),
        };
        let merged = read(&with_outputs(&first.encode_to_vec(), &[("x", FLOAT)])).unwrap();
        assert_eq!(merged.node.len(), 1);
        let outputs: Vec<_> = merged.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["y", "x"]);
        assert_eq!(merged.output[1].tensor(), Some((FLOAT, vec![])));
    }

    #[test]
    fn an_intermediate_value_keeps_the_type_the_exporter_recorded() {
        let typed = |name: &str, elem_type| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorType {
                    elem_type,
                    shape: None,
                }),
            }),
        };
        let graph = GraphProto {
            output: vec![typed("y", FLOAT)],
            value_info: vec![typed("h", DOUBLE)],
            ..Default::default()
        };
        assert_eq!(graph.elem_type_of("h"), Some(DOUBLE));
        assert_eq!(graph.elem_type_of("y"), Some(FLOAT));
        assert_eq!(graph.elem_type_of("nowhere"), None);
    }
}

/// Deepest tree a tree-ensemble operator may hold. ONNX Runtime builds its trees
/// recursively while loading: with 1.31, a chain of 2,048 branches overflows a 2 MiB thread
/// stack and the whole worker dies. The worker loads on threads with far more
/// (`registry::LOAD_STACK_BYTES`), and trees grown by the common libraries are much
/// shallower (XGBoost's default depth is 6; LightGBM's 31 leaves bound it at 30).
pub const MAX_TREE_DEPTH: usize = 1024;

/// Refuses a graph whose inputs or outputs declare a negative dimension (which would wrap
/// to a huge size wherever it is taken as unsigned).
pub fn check_dimensions(graph: &GraphProto) -> anyhow::Result<()> {
    for value in graph.input.iter().chain(&graph.output) {
        let dims = value
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .map(|s| s.dim.as_slice())
            .unwrap_or_default();
        if let Some(d) = dims.iter().filter_map(|d| d.dim_value).find(|&d| d < 0) {
            anyhow::bail!(
                "{:?} declares dimension {d}; a size cannot be negative",
                value.name
            );
        }
    }
    Ok(())
}

/// Refuses tree ensembles that would hang, crash or misread at run time, whatever engine
/// runs them: a tree whose branches loop back (a cycle), with no root, deeper than
/// [`MAX_TREE_DEPTH`], whose child ids name no node, or whose branches read a feature the
/// input does not have (negative, or past a fixed input width).
pub fn check_trees(graph: &GraphProto) -> anyhow::Result<()> {
    for node in &graph.node {
        if node.domain != "ai.onnx.ml" {
            continue;
        }
        let trees = match node.op_type.as_str() {
            "TreeEnsembleClassifier" | "TreeEnsembleRegressor" => node.trees_v3()?,
            "TreeEnsemble" => node.trees_v5()?,
            _ => continue,
        };
        let width = node
            .input
            .first()
            .and_then(|input| {
                graph
                    .input
                    .iter()
                    .chain(&graph.value_info)
                    .find(|v| &v.name == input)
            })
            .and_then(ValueInfoProto::tensor)
            .and_then(|(_, dims)| dims.last().copied().flatten());
        let place = |tree: i64| format!("{} (node {:?}), tree {tree}", node.op_type, node.name);
        for tree in trees {
            for &feature in &tree.features {
                if feature < 0 || width.is_some_and(|w| feature >= w) {
                    anyhow::bail!(
                        "{}: a branch reads feature {feature}, which the input ({} wide) does not have",
                        place(tree.id),
                        width.map_or("of unknown width".to_string(), |w| w.to_string()),
                    );
                }
            }
            tree.check()
                .map_err(|e| anyhow::anyhow!("{}: {e}", place(tree.id)))?;
        }
    }
    Ok(())
}

/// One tree's structure: for each branch, its children (`None` for a leaf).
struct Tree {
    id: i64,
    /// `children[i]`: the two children of node i, or none for a leaf.
    children: Vec<Option<[usize; 2]>>,
    /// The features the branches read.
    features: Vec<i64>,
    /// Roots given by the file (opset 5); else the nodes that are nobody's child.
    roots: Option<Vec<usize>>,
}

impl Tree {
    /// No cycle, a root, every node reached from it, no path longer than the limit.
    fn check(&self) -> Result<(), String> {
        let n = self.children.len();
        let roots = match &self.roots {
            Some(roots) => roots.clone(),
            None => {
                let mut has_parent = vec![false; n];
                for pair in self.children.iter().flatten() {
                    for &c in pair {
                        has_parent[c] = true;
                    }
                }
                let roots: Vec<usize> = (0..n).filter(|&i| !has_parent[i]).collect();
                if roots.is_empty() && n > 0 {
                    return Err(
                        "the tree has no root (every node is another's child: a cycle)".into(),
                    );
                }
                roots
            }
        };
        let mut walk = Walk {
            children: &self.children,
            mark: vec![Mark::New; n],
        };
        for root in roots {
            walk.from(root)?;
        }
        // A node the roots did not reach: walking from it tells a cycle among the unreached
        // (what leaves a node without a way in) from a stray node.
        if let Some(stray) = walk.mark.iter().position(|m| *m == Mark::New) {
            walk.from(stray)?;
            return Err(format!("node {stray} is not reached from the tree's root"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    New,
    /// On the current path: reaching it again is a cycle.
    Open,
    /// Walked, with the height of the subtree under it.
    Done(usize),
}

/// An iterative depth-first walk (a hostile tree must not overflow our stack either).
struct Walk<'a> {
    children: &'a [Option<[usize; 2]>],
    mark: Vec<Mark>,
}

impl Walk<'_> {
    fn from(&mut self, start: usize) -> Result<(), String> {
        let mut stack = vec![(start, false)];
        while let Some((node, expanded)) = stack.pop() {
            if expanded {
                let below = self.children[node].map_or(0, |pair| {
                    pair.iter()
                        .map(|&c| match self.mark[c] {
                            Mark::Done(h) => h,
                            _ => 0,
                        })
                        .max()
                        .unwrap_or(0)
                });
                // A leaf is height 1, so MAX_TREE_DEPTH branches above one are allowed.
                if below + 1 > MAX_TREE_DEPTH + 1 {
                    return Err(format!("the tree is deeper than {MAX_TREE_DEPTH} branches"));
                }
                self.mark[node] = Mark::Done(below + 1);
                continue;
            }
            match self.mark[node] {
                Mark::Done(_) => continue,
                Mark::Open => return Err(format!("node {node} is its own descendant (a cycle)")),
                Mark::New => {}
            }
            self.mark[node] = Mark::Open;
            stack.push((node, true));
            for &child in self.children[node].iter().flatten() {
                match self.mark[child] {
                    Mark::Open => {
                        return Err(format!("node {node} points back to node {child} (a cycle)"));
                    }
                    Mark::New => stack.push((child, false)),
                    Mark::Done(_) => {}
                }
            }
        }
        Ok(())
    }
}

impl NodeProto {
    fn ints(&self, name: &str) -> &[i64] {
        self.attribute(name).map_or(&[], |a| a.ints.as_slice())
    }

    /// Every per-node list holds `n` entries (`lists`: name and length).
    fn same_lengths(&self, n: usize, lists: &[(&str, usize)]) -> anyhow::Result<()> {
        match lists.iter().find(|(_, len)| *len != n) {
            Some((what, len)) => Err(anyhow::anyhow!(
                "{} (node {:?}): {what} has {len} entries for {n} nodes",
                self.op_type,
                self.name
            )),
            None => Ok(()),
        }
    }

    /// The trees of `TreeEnsembleClassifier`/`Regressor` (opsets 1–3): parallel lists of
    /// (tree id, node id, mode, feature, true child id, false child id).
    fn trees_v3(&self) -> anyhow::Result<Vec<Tree>> {
        let tree_ids = self.ints("nodes_treeids");
        let node_ids = self.ints("nodes_nodeids");
        let features = self.ints("nodes_featureids");
        let trues = self.ints("nodes_truenodeids");
        let falses = self.ints("nodes_falsenodeids");
        let modes = self
            .attribute("nodes_modes")
            .map_or(&[][..], |a| a.strings.as_slice());
        let n = tree_ids.len();
        self.same_lengths(
            n,
            &[
                ("nodes_nodeids", node_ids.len()),
                ("nodes_featureids", features.len()),
                ("nodes_truenodeids", trues.len()),
                ("nodes_falsenodeids", falses.len()),
                ("nodes_modes", modes.len()),
            ],
        )?;
        let mut by_tree: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
        for (i, &t) in tree_ids.iter().enumerate() {
            by_tree.entry(t).or_default().push(i);
        }
        let mut trees = Vec::with_capacity(by_tree.len());
        for (id, rows) in by_tree {
            let place = |e: String| {
                anyhow::anyhow!("{} (node {:?}), tree {id}: {e}", self.op_type, self.name)
            };
            let mut index = std::collections::HashMap::with_capacity(rows.len());
            for (k, &row) in rows.iter().enumerate() {
                if index.insert(node_ids[row], k).is_some() {
                    return Err(place(format!("node {} appears twice", node_ids[row])));
                }
            }
            let resolve = |child: i64| {
                index.get(&child).copied().ok_or_else(|| {
                    place(format!(
                        "a branch points to node {child}, which the tree does not have"
                    ))
                })
            };
            let mut children = Vec::with_capacity(rows.len());
            let mut read = Vec::new();
            for &row in &rows {
                if modes[row].as_slice() == b"LEAF" {
                    children.push(None);
                } else {
                    children.push(Some([resolve(trues[row])?, resolve(falses[row])?]));
                    read.push(features[row]);
                }
            }
            trees.push(Tree {
                id,
                children,
                features: read,
                roots: None,
            });
        }
        Ok(trees)
    }

    /// The trees of `TreeEnsemble` (opset 5): every listed node is a branch; a child is a
    /// leaf index where `nodes_trueleafs`/`nodes_falseleafs` say so, else a node index;
    /// `tree_roots` gives each tree's root. Checked as one forest (trees may not share
    /// nodes, and a cycle through any of them is refused).
    fn trees_v5(&self) -> anyhow::Result<Vec<Tree>> {
        let roots = self.ints("tree_roots");
        let features = self.ints("nodes_featureids");
        let trues = self.ints("nodes_truenodeids");
        let falses = self.ints("nodes_falsenodeids");
        let true_leaf = self.ints("nodes_trueleafs");
        let false_leaf = self.ints("nodes_falseleafs");
        let leaves = self.ints("leaf_targetids").len();
        let n = features.len();
        let place = |e: String| anyhow::anyhow!("{} (node {:?}): {e}", self.op_type, self.name);
        self.same_lengths(
            n,
            &[
                ("nodes_truenodeids", trues.len()),
                ("nodes_falsenodeids", falses.len()),
                ("nodes_trueleafs", true_leaf.len()),
                ("nodes_falseleafs", false_leaf.len()),
            ],
        )?;
        let child = |id: i64, is_leaf: i64| -> anyhow::Result<Option<usize>> {
            let limit = if is_leaf != 0 { leaves } else { n };
            let index = usize::try_from(id)
                .ok()
                .filter(|&i| i < limit)
                .ok_or_else(|| {
                    place(format!(
                        "a branch points to {} {id}, which the ensemble does not have",
                        if is_leaf != 0 { "leaf" } else { "node" }
                    ))
                })?;
            Ok((is_leaf == 0).then_some(index))
        };
        // Leaves become nodes of their own past the branches, so one walk sees both.
        let mut children = Vec::with_capacity(n + 1);
        for i in 0..n {
            let t = child(trues[i], true_leaf[i])?.unwrap_or(n);
            let f = child(falses[i], false_leaf[i])?.unwrap_or(n);
            children.push(Some([t, f]));
        }
        children.push(None);
        let roots = roots
            .iter()
            .map(|&r| child(r, 0).map(|c| c.unwrap_or(n)))
            .collect::<anyhow::Result<Vec<usize>>>()?;
        Ok(vec![Tree {
            id: 0,
            children,
            features: features.to_vec(),
            roots: Some(roots),
        }])
    }
}
