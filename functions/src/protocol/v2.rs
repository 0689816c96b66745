//! The Open Inference Protocol v2 (KServe V2 / Triton) on the HTTP API: `infer` requests and
//! responses in JSON or with the binary tensor extension (`Inference-Header-Content-Length`:
//! a JSON header, then raw little-endian tensors; `BYTES` elements as a 4-byte
//! little-endian length and the bytes), and the metadata documents.
//!
//! Problems name fields by their place in the request (`inputs[0].shape`,
//! `inputs[0].data[3]`: the data of input 3 of the batch).

use inferencehub_proto::pb::{ModelInfo, Tensor, TensorInfo};
use inferencehub_proto::tensor::{self, DataType};
use inferencehub_proto::{FieldError, pb};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{Answer, Protocol, json_body};
use crate::command::{self, Command, Inputs, Place};
use crate::layers::json_response;
use crate::problem::{NamePlace, Problem};
use crate::router::Matched;

/// The header that announces the binary extension: the length of the JSON part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Parameters of a tensor or request: `binary_data_size`, `binary_data`,
/// `binary_data_output`; others are ignored.
pub type Parameters = Map<String, Value>;

/// One input tensor of an infer request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    /// The model's input name (see its metadata).
    pub name: String,
    /// The input's shape (see the model's metadata); the first dimension counts the inputs.
    #[schema(min_items = 1)]
    pub shape: Vec<i64>,
    /// The input's element type (see the model's metadata); `FP32` is also taken for a
    /// model's one numeric input whatever its type.
    #[schema(
        pattern = "^(BOOL|UINT8|UINT16|UINT32|UINT64|INT8|INT16|INT32|INT64|FP16|FP32|FP64|BYTES)$"
    )]
    pub datatype: String,
    /// `binary_data_size` when the data follows the JSON (binary extension).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Row-major elements, flat or nested (JSON form).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// An output the client wants.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    /// `label`, `probability`, `scores` or `values`, or one of the model's named outputs.
    pub name: String,
    /// `binary_data: true` for the binary extension.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
}

/// `POST /v2/models/{name}/infer` (JSON form; the binary form sends this as the JSON part).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    pub id: Option<String>,
    /// `binary_data_output: true` for every output in binary.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Each of the model's inputs, by name.
    #[schema(min_items = 1)]
    pub inputs: Vec<InferInput>,
    /// The outputs wanted (default: all).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// An output tensor's elements, row-major: numbers, booleans or strings by its datatype.
pub type OutputData = Vec<Value>;

/// A tensor's elements in the binary extension's layout: raw little-endian elements, or
/// each `BYTES` element as a 4-byte little-endian length and its bytes.
fn write_binary(t: &Tensor, out: &mut Vec<u8>) {
    if t.datatype == DataType::Bytes.name() {
        for b in &t.bytes_contents {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    } else {
        out.extend_from_slice(&t.raw_contents);
    }
}

/// `binary_data_size` of an output sent as binary data.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BinaryParameters {
    /// Bytes of this output after the JSON.
    pub binary_data_size: usize,
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OutputTensor {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Row-major elements (absent when the output went as binary data).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<OutputData>,
    /// Where binary data says its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryParameters>,
}

/// The answer to an infer request.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs asked for.
    pub outputs: Vec<OutputTensor>,
}

/// A tensor's name, datatype and shape (-1: any size).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// `BYTES`, `FP32`, ...
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<i64>,
}

impl From<&TensorInfo> for TensorMetadata {
    fn from(t: &TensorInfo) -> Self {
        Self {
            name: t.name.clone(),
            datatype: t.datatype.clone(),
            shape: t.shape.clone(),
        }
    }
}

/// `GET /v2/models/{name}`: name, versions, platform, inputs and outputs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    /// Its name.
    pub name: String,
    /// The versions served.
    pub versions: Vec<String>,
    /// `inferencehub/<architecture>`.
    pub platform: String,
    /// Its inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Its outputs.
    pub outputs: Vec<TensorMetadata>,
}

impl From<&ModelInfo> for ModelMetadata {
    fn from(m: &ModelInfo) -> Self {
        Self {
            name: m.name.clone(),
            versions: vec![m.version.clone()],
            platform: format!("inferencehub/{}", m.architecture),
            inputs: command::input_specs(m)
                .iter()
                .map(TensorMetadata::from)
                .collect(),
            outputs: command::outputs(m)
                .into_iter()
                .map(|o| TensorMetadata {
                    name: o.name,
                    datatype: o.datatype,
                    shape: o.shape,
                })
                .collect(),
        }
    }
}

/// `GET /v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `inferencehub`.
    pub name: &'static str,
    /// The gateway's version.
    pub version: &'static str,
    /// The protocol extensions served.
    pub extensions: Vec<&'static str>,
}

impl ServerMetadata {
    /// This server's.
    pub fn ours() -> Self {
        Self {
            name: "inferencehub",
            version: env!("CARGO_PKG_VERSION"),
            extensions: vec!["binary_tensor_data"],
        }
    }
}

/// `GET /v2/models/{name}/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    /// The model.
    pub name: String,
    /// Whether it answers.
    pub ready: bool,
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// Always true while the gateway answers.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Whether a worker answers SERVING.
    pub ready: bool,
}

/// `POST /v2/models/{name}[/versions/{version}]/infer` as a [`Protocol`].
pub struct V2 {
    id: Option<String>,
    /// Each requested output with whether it goes as binary data; `None`: every output,
    /// binary when `binary_data_output` asked for it.
    outputs: Option<Vec<(String, bool)>>,
    binary_default: bool,
}

impl NamePlace for V2 {
    fn name(&self, place: &Place) -> String {
        match place {
            Place::Model => "name".into(),
            Place::Batch => "inputs[0].shape".into(),
            Place::Input(i, e) => match e.element {
                Some(j) => format!("inputs[0].data[{i}][{j}]"),
                None => format!("inputs[0].data[{i}]"),
            },
            Place::Tensor(e) => match (e.tensor, e.element) {
                (None, _) => "inputs".into(),
                (Some(k), Some(j)) => format!("inputs[{k}].data[{j}]"),
                (Some(k), None) => format!("inputs[{k}].{}", e.member.name()),
            },
            Place::Tensors => "inputs".into(),
            Place::Output(i) => format!("outputs[{i}].name"),
            Place::Named(name) => name.clone(),
        }
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::invalid(vec![FieldError::new(field, message)])
}

fn flag(parameters: &Option<Parameters>, name: &str) -> Option<bool> {
    parameters.as_ref()?.get(name)?.as_bool()
}

/// Decodes tensor `k`'s elements from JSON or from `binary`, taking what it uses.
/// Problems name the member, and an element by its row-major place in the tensor.
fn tensor(k: usize, input: InferInput, binary: &mut &[u8]) -> Result<Tensor, Problem> {
    let at = |member: &str| format!("inputs[{k}].{member}");
    if input.shape.iter().any(|&d| d < 0) {
        return Err(err(at("shape"), "dimensions must be 0 or more"));
    }
    let count = tensor::element_count(&input.shape)
        .filter(|&c| c <= tensor::MAX_ELEMENTS)
        .ok_or_else(|| {
            err(
                at("shape"),
                format!("holds more than {} elements", tensor::MAX_ELEMENTS),
            )
        })?;
    let element = |e: usize| format!("inputs[{k}].data[{e}]");
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        err(
            at("datatype"),
            format!("must be one of {}", DataType::names()),
        )
    })?;
    let binary_size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"));
    let (raw, bytes) = match (binary_size, input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .ok_or_else(|| err(at("parameters.binary_data_size"), "must be a byte count"))?
                as usize;
            if size > binary.len() {
                return Err(err(
                    at("parameters.binary_data_size"),
                    format!("is {size}, but {} bytes follow the JSON", binary.len()),
                ));
            }
            let (data, rest) = binary.split_at(size);
            *binary = rest;
            match datatype.width() {
                None => (Vec::new(), decode_bytes(data, count, at("data"), &element)?),
                Some(width) => {
                    if count.checked_mul(width) != Some(data.len()) {
                        return Err(err(
                            at("parameters.binary_data_size"),
                            format!(
                                "shape {:?} needs {count} {} values ({width} bytes each), got {} bytes",
                                input.shape,
                                datatype.name(),
                                data.len()
                            ),
                        ));
                    }
                    (data.to_vec(), Vec::new())
                }
            }
        }
        (None, Some(data)) => {
            let mut values = Vec::new();
            command::leaves(&data, &mut values);
            if values.len() != count {
                return Err(err(
                    at("data"),
                    format!("shape says {count} elements, data has {}", values.len()),
                ));
            }
            command::json_elements(datatype, &values)
                .map_err(|(e, message)| err(element(e), message))?
        }
        (Some(_), Some(_)) => {
            return Err(err(
                at("data"),
                "send `data` or `parameters.binary_data_size`, not both",
            ));
        }
        (None, None) => {
            return Err(err(
                at("data"),
                "is required (or binary data with `parameters.binary_data_size`)",
            ));
        }
    };
    Ok(Tensor {
        name: input.name,
        datatype: datatype.name().into(),
        shape: input.shape,
        raw_contents: raw,
        bytes_contents: bytes,
    })
}

/// `BYTES` elements of the binary extension: each a 4-byte little-endian length and its
/// bytes, exactly `n` of them.
fn decode_bytes(
    mut data: &[u8],
    n: usize,
    whole: String,
    element: &dyn Fn(usize) -> String,
) -> Result<Vec<Vec<u8>>, Problem> {
    let mut out = Vec::with_capacity(n.min(4096));
    while !data.is_empty() {
        let field = element(out.len());
        if data.len() < 4 {
            return Err(err(field, "a BYTES element needs a 4-byte length"));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data.len() - 4 < len {
            return Err(err(field, format!("says {len} bytes, fewer follow")));
        }
        out.push(data[4..4 + len].to_vec());
        data = &data[4 + len..];
    }
    if out.len() != n {
        return Err(err(
            whole,
            format!(
                "shape says {n} elements, the binary data holds {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

impl Protocol for V2 {
    fn decode(req: &Request, route: &Matched) -> Result<(Self, Command), Problem> {
        let body = req.body().as_ref();
        let header = req
            .headers()
            .get(HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("invalid"));
        let (json_part, mut binary) = match header {
            None => (body, &[][..]),
            Some(text) => {
                let n: usize = text.trim().parse().map_err(|_| {
                    err(
                        "Inference-Header-Content-Length",
                        "must be the length in bytes of the JSON part",
                    )
                })?;
                if n > body.len() {
                    return Err(err(
                        "Inference-Header-Content-Length",
                        format!("is {n}, longer than the {}-byte body", body.len()),
                    ));
                }
                body.split_at(n)
            }
        };
        let request: InferRequest = json_body(json_part).map_err(|e| Problem::invalid(vec![e]))?;
        let binary_default = flag(&request.parameters, "binary_data_output").unwrap_or(false);
        let tensors = request
            .inputs
            .into_iter()
            .enumerate()
            .map(|(k, input)| tensor(k, input, &mut binary))
            .collect::<Result<Vec<_>, _>>()?;
        if !binary.is_empty() {
            return Err(err(
                "Inference-Header-Content-Length",
                format!("{} bytes after the JSON belong to no input", binary.len()),
            ));
        }
        let outputs: Option<Vec<(String, bool)>> = request.outputs.map(|requested| {
            requested
                .into_iter()
                .map(|o| {
                    let binary = flag(&o.parameters, "binary_data").unwrap_or(binary_default);
                    (o.name, binary)
                })
                .collect()
        });
        let command = Command {
            refuse_truncation: false,
            model: route.param("name").unwrap_or_default().to_string(),
            version: route.param("version").map(str::to_string),
            inputs: Inputs::Tensors(tensors),
            outputs: outputs
                .as_ref()
                .map(|o| o.iter().map(|(name, _)| name.clone()).collect()),
        };
        let protocol = Self {
            id: request.id,
            outputs,
            binary_default,
        };
        Ok((protocol, command))
    }

    fn encode(self, answer: Answer<'_>) -> Response<Body> {
        let results = &answer.batch.results;
        let mut wanted: Vec<(command::OutputSpec, bool)> = command::outputs(answer.model)
            .into_iter()
            .filter_map(|spec| match &self.outputs {
                None => Some((spec, self.binary_default)),
                Some(asked) => asked
                    .iter()
                    .find(|(name, _)| *name == spec.name)
                    .map(|(_, binary)| (spec, *binary)),
            })
            .collect();
        // In the order asked for, else the model's.
        let order = |name: &str| {
            self.outputs
                .as_ref()
                .and_then(|o| o.iter().position(|(n, _)| n == name))
                .unwrap_or(0)
        };
        wanted.sort_by_key(|(spec, _)| order(&spec.name));
        let mut binary = Vec::new();
        let outputs = wanted
            .into_iter()
            .filter_map(|(spec, as_binary)| {
                let t = output(&spec, results)?;
                let mut output = OutputTensor {
                    name: t.name.clone(),
                    datatype: t.datatype.clone(),
                    shape: t.shape.clone(),
                    data: None,
                    parameters: None,
                };
                if as_binary {
                    let start = binary.len();
                    write_binary(&t, &mut binary);
                    output.parameters = Some(BinaryParameters {
                        binary_data_size: binary.len() - start,
                    });
                } else {
                    output.data = Some(command::json_values(&t));
                }
                Some(output)
            })
            .collect();
        let body = InferResponse {
            model_name: answer.batch.model_name,
            model_version: answer.batch.model_version,
            id: self.id,
            outputs,
        };
        if binary.is_empty() {
            return json_response(200, &body);
        }
        let json = serde_json::to_string(&body).unwrap_or_default();
        let length = json.len();
        let mut bytes = json.into_bytes();
        bytes.extend_from_slice(&binary);
        let mut response = Response::new(Body::Binary(bytes));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        response
            .headers_mut()
            .insert(HEADER_LENGTH, http::HeaderValue::from(length));
        response
    }
}

/// Output `spec` of every result as one tensor: the gateway's own from the answers'
/// fields, the model's named ones joined from each result's part. `None` when the worker
/// sent no part for a result.
fn output(spec: &command::OutputSpec, results: &[pb::PredictResponse]) -> Option<Tensor> {
    let n = results.len() as i64;
    let floats = |name: &str, shape: Vec<i64>, values: Vec<f32>| Tensor {
        name: name.into(),
        datatype: DataType::F32.name().into(),
        shape,
        raw_contents: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        bytes_contents: Vec::new(),
    };
    let width = |w: usize| vec![n, w as i64];
    match (spec.named, spec.name.as_str()) {
        (true, name) => tensor::concat(
            results
                .iter()
                .map(|r| r.outputs.iter().find(|t| t.name == name))
                .collect::<Option<Vec<_>>>()?,
        ),
        (false, "label") => Some(Tensor {
            name: "label".into(),
            datatype: DataType::Bytes.name().into(),
            shape: vec![n],
            raw_contents: Vec::new(),
            bytes_contents: results
                .iter()
                .map(|r| r.label.clone().into_bytes())
                .collect(),
        }),
        (false, "probability") => Some(floats(
            "probability",
            vec![n],
            results.iter().map(|r| r.probability).collect(),
        )),
        // The worker sends every label's score in the model's label order.
        (false, "scores") => Some(floats(
            "scores",
            width(results.first().map_or(0, |r| r.scores.len())),
            results
                .iter()
                .flat_map(|r| r.scores.iter().map(|s| s.probability))
                .collect(),
        )),
        (false, name) => Some(floats(
            name,
            width(results.first().map_or(0, |r| r.values.len())),
            results
                .iter()
                .flat_map(|r| r.values.iter().copied())
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferencehub_proto::pb::{LabelScore, ModelKind, PredictBatchResponse, PredictResponse};
    use serde_json::json;

    fn iris() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            version: "1".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 4,
            labels: vec!["setosa".into(), "versicolor".into(), "virginica".into()],
            ..Default::default()
        }
    }

    fn request(body: Vec<u8>, header: Option<usize>) -> Request {
        let mut req = http::Request::builder()
            .method("POST")
            .uri("/v2/models/iris/infer");
        if let Some(n) = header {
            req = req.header(HEADER_LENGTH, n.to_string());
        }
        req.body(Body::Binary(body)).unwrap()
    }

    fn decode(req: &Request) -> Result<(V2, Command), Problem> {
        let route = crate::router::Matched::find(crate::router::Function::Predict, req)
            .expect("a predict route");
        V2::decode(req, &route)
    }

    fn fields(r: Result<(V2, Command), Problem>) -> Vec<String> {
        r.err()
            .unwrap()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn json_and_binary_inputs_decode_to_the_same_command() {
        let json_body = json!({"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
            "data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]]}]});
        let (a, ca) = decode(&request(json_body.to_string().into_bytes(), None)).unwrap();
        let header = json!({"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": 32}}], "parameters": {"binary_data_output": true}})
        .to_string();
        let mut body = header.clone().into_bytes();
        for x in [5.1f32, 3.5, 1.4, 0.2, 6.0, 2.2, 5.0, 1.5] {
            body.extend_from_slice(&x.to_le_bytes());
        }
        let (b, cb) = decode(&request(body, Some(header.len()))).unwrap();
        assert_eq!(ca, cb);
        assert_eq!(ca.model, "iris");
        assert!(b.binary_default && !a.binary_default);
        let sent = ca.inputs.bind(&iris()).unwrap();
        assert_eq!(sent.len(), 2);

        let header = json!({"inputs": [{"name": "prompt", "shape": [2], "datatype": "BYTES",
            "parameters": {"binary_data_size": 15}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        for s in ["good", "bad"] {
            body.extend_from_slice(&(s.len() as u32).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        let (_, c) = decode(&request(body, Some(header.len()))).unwrap();
        let Inputs::Tensors(t) = c.inputs else {
            panic!()
        };
        assert_eq!(t[0].bytes_contents, [b"good".to_vec(), b"bad".to_vec()]);
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let req = |v: Value| decode(&request(v.to_string().into_bytes(), None));
        let input = |shape: Value, data: Value| json!({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data}]});
        assert_eq!(fields(decode(&request(b"{".to_vec(), None))), ["body"]);
        assert_eq!(
            fields(req(
                json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 4]}]})
            )),
            ["inputs[0].datatype"]
        );
        // Every OIP type decodes, checked against its range; the model's type is checked
        // once the model is known.
        assert_eq!(
            fields(req(
                json!({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "INT8", "data": [1, 200]}]})
            )),
            ["inputs[0].data[1]"]
        );
        let (_, ints) = req(
            json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
        )
        .unwrap();
        let Inputs::Tensors(t) = ints.inputs else {
            panic!()
        };
        assert_eq!(t[0].raw_contents.len(), 32);
        assert_eq!(
            fields(req(input(json!([-1, 4]), json!([])))),
            ["inputs[0].shape"]
        );
        assert_eq!(
            fields(req(input(json!([2, 4]), json!([1, 2, 3])))),
            ["inputs[0].data"]
        );
        assert_eq!(
            fields(req(input(json!([2, 4]), json!([1, 2, 3, 4, 5, "x", 7, 8])))),
            ["inputs[0].data[5]"]
        );
        // Shapes whose element count overflows are refused, in JSON and in binary; an
        // empty first dimension with huge others does not overflow either.
        let (_, empty) = req(input(json!([0, i64::MAX, i64::MAX]), json!([]))).unwrap();
        let refused = empty.inputs.bind(&iris()).unwrap_err();
        assert_eq!(
            refused[0].place,
            Place::tensor(0, "features", inferencehub_proto::tensor::Member::Shape)
        );
        assert_eq!(
            fields(req(input(json!([i64::MAX, 4]), json!([])))),
            ["inputs[0].shape"]
        );
        let huge =
            json!({"inputs": [{"name": "features", "shape": [1u64 << 62, 1], "datatype": "FP32",
            "parameters": {"binary_data_size": 4}}]})
            .to_string();
        let mut body = huge.clone().into_bytes();
        body.extend_from_slice(&[0u8; 4]);
        assert_eq!(
            fields(decode(&request(body, Some(huge.len())))),
            ["inputs[0].shape"]
        );
        let short = json!({"inputs": [{"name": "features", "shape": [2, 1], "datatype": "FP64",
            "parameters": {"binary_data_size": 8}}]})
        .to_string();
        let mut body = short.clone().into_bytes();
        body.extend_from_slice(&[0u8; 8]);
        assert_eq!(
            fields(decode(&request(body, Some(short.len())))),
            ["inputs[0].parameters.binary_data_size"]
        );
        // Binary: a length that lies, and bytes that belong to nothing.
        let header = json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": 16}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&[0u8; 20]);
        assert_eq!(
            fields(decode(&request(body.clone(), Some(9999)))),
            ["Inference-Header-Content-Length"]
        );
        assert_eq!(
            fields(decode(&request(body, Some(header.len())))),
            ["Inference-Header-Content-Length"]
        );
        let text = json!({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 6}}]})
        .to_string();
        let mut body = text.clone().into_bytes();
        body.extend_from_slice(&[2, 0, 0, 0, 0xff, 0xfe]);
        // BYTES are bytes on the wire; a text model refuses what is not UTF-8.
        let (v2, c) = decode(&request(body, Some(text.len()))).unwrap();
        let model = ModelInfo {
            kind: ModelKind::Text as i32,
            ..iris()
        };
        let refused = c.inputs.bind(&model).unwrap_err();
        assert_eq!(v2.name(&refused[0].place), "inputs[0].data[0]");
    }

    #[test]
    fn responses_follow_the_requested_outputs_in_json_or_binary() {
        let batch = PredictBatchResponse {
            model_name: "iris".into(),
            model_version: "1".into(),
            results: vec![PredictResponse {
                label: "setosa".into(),
                probability: 0.9,
                scores: ["setosa", "versicolor", "virginica"]
                    .iter()
                    .zip([0.9, 0.06, 0.04])
                    .map(|(l, p)| LabelScore {
                        label: l.to_string(),
                        probability: p,
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let protocol = V2 {
            id: Some("r1".into()),
            outputs: Some(vec![("scores".into(), false), ("label".into(), true)]),
            binary_default: false,
        };
        let model = iris();
        let response = protocol.encode(Answer {
            model: &model,
            batch,
            request_id: "x",
        });
        let Body::Binary(bytes) = response.body() else {
            panic!("binary")
        };
        let n: usize = response.headers()[HEADER_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes[..n]).unwrap();
        assert_eq!(body["id"], "r1");
        assert_eq!(body["outputs"][0]["name"], "scores");
        assert_eq!(body["outputs"][0]["shape"], json!([1, 3]));
        let scores: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
        assert!((scores[0] - 0.9).abs() < 1e-6 && (scores[2] - 0.04).abs() < 1e-6);
        assert_eq!(body["outputs"][1]["parameters"]["binary_data_size"], 10);
        assert_eq!(
            &bytes[n..],
            [6, 0, 0, 0, b's', b'e', b't', b'o', b's', b'a']
        );
    }
}
