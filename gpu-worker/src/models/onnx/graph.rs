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
