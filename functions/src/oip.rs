//! The Open Inference Protocol v2 (KServe V2 / Triton) on the HTTP API: model metadata,
//! and `infer` requests and responses in JSON or with the binary tensor extension
//! (`Inference-Header-Content-Length`: a JSON header, then raw little-endian tensors;
//! `BYTES` elements as a 4-byte little-endian length and the bytes).
//!
//! A text model takes one `BYTES` input of shape `[N]`; a tabular model one `FP32` input of
//! shape `[N, F]`. Outputs: `label` (`BYTES [N]`), `probability` (`FP32 [N]`) and `scores`
//! (`FP32 [N, L]`, one column per label in the model's label order) from classifiers,
//! `values` (`FP32 [N, V]`) from regressors. Problems name fields by their place in the
//! request (`inputs[0].shape`, `inputs[0].data[3]`).

use inferencehub_proto::FieldError;
use inferencehub_proto::pb::{FeatureRow, ModelInfo, ModelKind, ModelTask, PredictBatchResponse};
use inferencehub_proto::signature::Input;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The header that announces the binary extension: the length of the JSON part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The input name a model advertises: its ONNX input tensor's, else `text` / `features`.
pub fn input_name(m: &ModelInfo) -> String {
    match &m.input {
        Some(t) if !t.name.is_empty() => t.name.clone(),
        _ if m.kind() == ModelKind::Text => "text".into(),
        _ => "features".into(),
    }
}

fn is_text(m: &ModelInfo) -> bool {
    m.kind() == ModelKind::Text
}

fn is_regression(m: &ModelInfo) -> bool {
    m.task() == ModelTask::Regression
}

/// The output names a model answers with.
pub fn output_names(m: &ModelInfo) -> &'static [&'static str] {
    if is_regression(m) {
        &["values"]
    } else {
        &["label", "probability", "scores"]
    }
}

/// `GET /v2/models/{name}`: name, versions, platform, inputs and outputs (-1: any size).
pub fn model_metadata(m: &ModelInfo) -> Value {
    let input = if is_text(m) {
        json!({"name": input_name(m), "datatype": "BYTES", "shape": [-1]})
    } else {
        json!({"name": input_name(m), "datatype": "FP32", "shape": [-1, m.feature_count]})
    };
    let outputs = if is_regression(m) {
        vec![json!({"name": "values", "datatype": "FP32", "shape": [-1, m.value_count.max(1)]})]
    } else {
        vec![
            json!({"name": "label", "datatype": "BYTES", "shape": [-1]}),
            json!({"name": "probability", "datatype": "FP32", "shape": [-1]}),
            json!({"name": "scores", "datatype": "FP32", "shape": [-1, m.labels.len()]}),
        ]
    };
    json!({
        "name": m.name,
        "versions": [m.version],
        "platform": format!("inferencehub/{}", m.architecture),
        "inputs": [input],
        "outputs": outputs,
    })
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// The inputs of one infer request.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// Texts, one per input.
    Text(Vec<String>),
    /// Feature rows.
    Rows(Vec<Vec<f32>>),
}

impl Tensor {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Rows(r) => r.len(),
        }
    }

    /// Whether there is no input.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs as the signature checks see them.
    pub fn inputs(&self) -> Vec<Input<'_>> {
        match self {
            Self::Text(t) => t
                .iter()
                .map(|p| Input {
                    prompt: Some(p),
                    features: None,
                })
                .collect(),
            Self::Rows(r) => r
                .iter()
                .map(|f| Input {
                    prompt: None,
                    features: Some(f),
                })
                .collect(),
        }
    }

    /// Into a batch request's prompts or rows.
    pub fn into_batch(self) -> (Vec<String>, Vec<FeatureRow>) {
        match self {
            Self::Text(t) => (t, Vec::new()),
            Self::Rows(r) => (
                Vec::new(),
                r.into_iter()
                    .map(|features| FeatureRow { features })
                    .collect(),
            ),
        }
    }
}

/// A parsed infer request.
#[derive(Debug, Clone)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// The inputs.
    pub tensor: Tensor,
    /// The outputs to send, each with whether it goes as binary data.
    pub outputs: Vec<(&'static str, bool)>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> Vec<FieldError> {
    vec![FieldError::new(field, message)]
}

fn flag(parameters: &Option<Map<String, Value>>, name: &str) -> Option<bool> {
    parameters.as_ref()?.get(name)?.as_bool()
}

/// Flattens nested JSON arrays into their leaves.
fn leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        other => out.push(other),
    }
}

/// Parses an infer request for `model` (its inputs are checked against the signature by
/// the caller). `header_length` is the `Inference-Header-Content-Length` value, if any.
pub fn parse_infer(
    body: &[u8],
    header_length: Option<&str>,
    model: &ModelInfo,
    max_inputs: usize,
) -> Result<InferRequest, Vec<FieldError>> {
    let (json_part, mut binary) = match header_length {
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
    let raw: RawRequest = serde_json::from_slice(json_part).map_err(|e| {
        err(
            "body",
            format!("not an Open Inference Protocol infer request: {e}"),
        )
    })?;
    let expected = input_name(model);
    if raw.inputs.len() != 1 {
        return Err(err(
            "inputs",
            format!(
                "this model takes exactly one input, {expected:?}; got {}",
                raw.inputs.len()
            ),
        ));
    }
    let input = &raw.inputs[0];
    if input.name != expected {
        return Err(err(
            "inputs[0].name",
            format!("this model's input is {expected:?}"),
        ));
    }
    let text = is_text(model);
    let datatype = if text { "BYTES" } else { "FP32" };
    if input.datatype != datatype {
        return Err(err(
            "inputs[0].datatype",
            format!("this model takes {datatype}"),
        ));
    }
    let features = model.feature_count as i64;
    let n = match (text, input.shape.as_slice()) {
        (true, [n]) if *n >= 0 => *n as usize,
        (false, [n, f]) if *n >= 0 && *f == features => *n as usize,
        _ => {
            let want = if text {
                "[N]".to_string()
            } else {
                format!("[N, {features}]")
            };
            return Err(err(
                "inputs[0].shape",
                format!("must be {want} for this model"),
            ));
        }
    };
    if n == 0 || n > max_inputs {
        return Err(err(
            "inputs[0].shape",
            format!("between 1 and {max_inputs} inputs per request, got {n}"),
        ));
    }
    let binary_size = input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"));
    let tensor = match (binary_size, &input.data) {
        (Some(size), None) => {
            let size = size.as_u64().ok_or_else(|| {
                err(
                    "inputs[0].parameters.binary_data_size",
                    "must be a byte count",
                )
            })? as usize;
            if size > binary.len() {
                return Err(err(
                    "inputs[0].parameters.binary_data_size",
                    format!("is {size}, but {} bytes follow the JSON", binary.len()),
                ));
            }
            let (data, rest) = binary.split_at(size);
            binary = rest;
            if text {
                Tensor::Text(decode_bytes(data, n)?)
            } else {
                Tensor::Rows(decode_fp32(data, n, features as usize)?)
            }
        }
        (None, Some(data)) => {
            let mut values = Vec::new();
            leaves(data, &mut values);
            if text {
                if values.len() != n {
                    return Err(err(
                        "inputs[0].data",
                        format!("shape says {n} elements, data has {}", values.len()),
                    ));
                }
                Tensor::Text(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                err(format!("inputs[0].data[{i}]"), "must be a string")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                )
            } else {
                let f = features as usize;
                if values.len() != n * f {
                    return Err(err(
                        "inputs[0].data",
                        format!("shape says {} elements, data has {}", n * f, values.len()),
                    ));
                }
                let mut flat = Vec::with_capacity(n * f);
                for (i, v) in values.iter().enumerate() {
                    let x = v.as_f64().ok_or_else(|| {
                        err(format!("inputs[0].data[{}]", i / f), "must hold numbers")
                    })?;
                    if x.is_finite() && x.abs() > f32::MAX as f64 {
                        return Err(err(
                            format!("inputs[0].data[{}]", i / f),
                            "a value is beyond the FP32 range",
                        ));
                    }
                    flat.push(x as f32);
                }
                Tensor::Rows(flat.chunks(f).map(<[f32]>::to_vec).collect())
            }
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "inputs[0].data",
                "send `data` or `parameters.binary_data_size`, not both",
            ));
        }
        (None, None) => {
            return Err(err(
                "inputs[0].data",
                "is required (or binary data with `parameters.binary_data_size`)",
            ));
        }
    };
    if !binary.is_empty() {
        return Err(err(
            "Inference-Header-Content-Length",
            format!("{} bytes after the JSON belong to no input", binary.len()),
        ));
    }
    let names = output_names(model);
    let binary_default = flag(&raw.parameters, "binary_data_output").unwrap_or(false);
    let outputs = match &raw.outputs {
        None => names.iter().map(|n| (*n, binary_default)).collect(),
        Some(requested) => {
            let mut out = Vec::new();
            for (i, o) in requested.iter().enumerate() {
                let name = names.iter().find(|n| **n == o.name).ok_or_else(|| {
                    err(
                        format!("outputs[{i}].name"),
                        format!("this model's outputs are {}", names.join(", ")),
                    )
                })?;
                out.push((
                    *name,
                    flag(&o.parameters, "binary_data").unwrap_or(binary_default),
                ));
            }
            out
        }
    };
    Ok(InferRequest {
        id: raw.id,
        tensor,
        outputs,
    })
}

fn decode_fp32(data: &[u8], n: usize, f: usize) -> Result<Vec<Vec<f32>>, Vec<FieldError>> {
    if data.len() != n * f * 4 {
        return Err(err(
            "inputs[0].parameters.binary_data_size",
            format!(
                "shape [{n}, {f}] needs {} bytes of FP32, got {}",
                n * f * 4,
                data.len()
            ),
        ));
    }
    let flat: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(flat.chunks(f.max(1)).map(<[f32]>::to_vec).collect())
}

fn decode_bytes(mut data: &[u8], n: usize) -> Result<Vec<String>, Vec<FieldError>> {
    let mut out = Vec::with_capacity(n);
    while !data.is_empty() {
        let i = out.len();
        let field = || format!("inputs[0].data[{i}]");
        if data.len() < 4 {
            return Err(err(field(), "a BYTES element needs a 4-byte length"));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data.len() - 4 < len {
            return Err(err(field(), format!("says {len} bytes, fewer follow")));
        }
        let text = std::str::from_utf8(&data[4..4 + len])
            .map_err(|_| err(field(), "must be UTF-8 text"))?;
        out.push(text.to_string());
        data = &data[4 + len..];
    }
    if out.len() != n {
        return Err(err(
            "inputs[0].data",
            format!(
                "shape says {n} elements, the binary data holds {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// An infer response: the JSON document and, when any output goes as binary data, the
/// bytes that follow it (the caller sets `Inference-Header-Content-Length`).
pub fn infer_response(
    model: &ModelInfo,
    request: &InferRequest,
    answer: &PredictBatchResponse,
) -> (Value, Vec<u8>) {
    let n = answer.results.len();
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (name, as_binary) in &request.outputs {
        let (datatype, shape, data): (&str, Vec<usize>, Tensorish) = match *name {
            "label" => (
                "BYTES",
                vec![n],
                Tensorish::Text(answer.results.iter().map(|r| r.label.clone()).collect()),
            ),
            "probability" => (
                "FP32",
                vec![n],
                Tensorish::Float(answer.results.iter().map(|r| r.probability).collect()),
            ),
            "scores" => {
                let labels = &model.labels;
                let rows = answer.results.iter().flat_map(|r| {
                    labels.iter().map(move |l| {
                        r.scores
                            .iter()
                            .find(|s| &s.label == l)
                            .map_or(0.0, |s| s.probability)
                    })
                });
                (
                    "FP32",
                    vec![n, labels.len()],
                    Tensorish::Float(rows.collect()),
                )
            }
            _ => {
                let width = answer.results.first().map_or(0, |r| r.values.len());
                let flat = answer.results.iter().flat_map(|r| r.values.iter().copied());
                ("FP32", vec![n, width], Tensorish::Float(flat.collect()))
            }
        };
        let mut output = json!({"name": name, "datatype": datatype, "shape": shape});
        if *as_binary {
            let start = binary.len();
            data.write_binary(&mut binary);
            output["parameters"] = json!({"binary_data_size": binary.len() - start});
        } else {
            output["data"] = data.to_json();
        }
        outputs.push(output);
    }
    let mut body = json!({
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "outputs": outputs,
    });
    if let Some(id) = &request.id {
        body["id"] = json!(id);
    }
    (body, binary)
}

enum Tensorish {
    Text(Vec<String>),
    Float(Vec<f32>),
}

impl Tensorish {
    fn to_json(&self) -> Value {
        match self {
            Self::Text(t) => json!(t),
            Self::Float(f) => json!(f),
        }
    }

    fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            Self::Text(t) => {
                for s in t {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
            Self::Float(f) => f
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferencehub_proto::pb::{LabelScore, PredictResponse};

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

    fn sentiment() -> ModelInfo {
        ModelInfo {
            name: "sentiment".into(),
            kind: ModelKind::Text as i32,
            labels: vec!["negative".into(), "positive".into()],
            ..Default::default()
        }
    }

    fn fields(r: Result<InferRequest, Vec<FieldError>>) -> Vec<String> {
        r.err().unwrap().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn json_and_binary_inputs_decode_to_the_same_tensor() {
        let json_body = json!({"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
            "data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 5.0, 1.5]]}]});
        let a = parse_infer(json_body.to_string().as_bytes(), None, &iris(), 32).unwrap();
        let header = json!({"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": 32}}], "parameters": {"binary_data_output": true}})
        .to_string();
        let mut body = header.clone().into_bytes();
        for x in [5.1f32, 3.5, 1.4, 0.2, 6.0, 2.2, 5.0, 1.5] {
            body.extend_from_slice(&x.to_le_bytes());
        }
        let b = parse_infer(&body, Some(&header.len().to_string()), &iris(), 32).unwrap();
        assert_eq!(a.tensor, b.tensor);
        assert!(b.outputs.iter().all(|(_, binary)| *binary));
        assert!(a.outputs.iter().all(|(_, binary)| !*binary));

        let header = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
            "parameters": {"binary_data_size": 15}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        for s in ["good", "bad"] {
            body.extend_from_slice(&(s.len() as u32).to_le_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        let t = parse_infer(&body, Some(&header.len().to_string()), &sentiment(), 32).unwrap();
        assert_eq!(t.tensor, Tensor::Text(vec!["good".into(), "bad".into()]));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let req = |v: Value| parse_infer(v.to_string().as_bytes(), None, &iris(), 32);
        let input = |shape: Value, data: Value| json!({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data}]});
        assert_eq!(fields(parse_infer(b"{", None, &iris(), 32)), ["body"]);
        assert_eq!(fields(req(json!({"inputs": []}))), ["inputs"]);
        assert_eq!(
            fields(req(
                json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
            )),
            ["inputs[0].name"]
        );
        assert_eq!(
            fields(req(
                json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]})
            )),
            ["inputs[0].datatype"]
        );
        assert_eq!(
            fields(req(input(json!([1, 3]), json!([1, 2, 3])))),
            ["inputs[0].shape"]
        );
        assert_eq!(
            fields(req(input(json!([0, 4]), json!([])))),
            ["inputs[0].shape"]
        );
        assert_eq!(
            fields(req(input(json!([99, 4]), json!([])))),
            ["inputs[0].shape"]
        );
        assert_eq!(
            fields(req(input(json!([2, 4]), json!([1, 2, 3])))),
            ["inputs[0].data"]
        );
        assert_eq!(
            fields(req(input(json!([2, 4]), json!([1, 2, 3, 4, 5, "x", 7, 8])))),
            ["inputs[0].data[1]"]
        );
        assert_eq!(
            fields(req(
                json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "nope"}]})
            )),
            ["outputs[0].name"]
        );
        // Binary: a length that lies, and bytes that belong to nothing.
        let header = json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": 16}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&[0u8; 20]);
        assert_eq!(
            fields(parse_infer(&body, Some("9999"), &iris(), 32)),
            ["Inference-Header-Content-Length"]
        );
        assert_eq!(
            fields(parse_infer(
                &body,
                Some(&header.len().to_string()),
                &iris(),
                32
            )),
            ["Inference-Header-Content-Length"]
        );
        let mut text = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
            "parameters": {"binary_data_size": 6}}]})
        .to_string();
        let len = text.len();
        let mut body = std::mem::take(&mut text).into_bytes();
        body.extend_from_slice(&[2, 0, 0, 0, 0xff, 0xfe]);
        assert_eq!(
            fields(parse_infer(&body, Some(&len.to_string()), &sentiment(), 32)),
            ["inputs[0].data[0]"]
        );
    }

    #[test]
    fn responses_follow_the_requested_outputs_in_json_or_binary() {
        let answer = PredictBatchResponse {
            model_name: "iris".into(),
            model_version: "1".into(),
            results: vec![PredictResponse {
                label: "setosa".into(),
                probability: 0.9,
                scores: vec![
                    LabelScore {
                        label: "virginica".into(),
                        probability: 0.04,
                    },
                    LabelScore {
                        label: "setosa".into(),
                        probability: 0.9,
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = InferRequest {
            id: Some("r1".into()),
            tensor: Tensor::Rows(vec![vec![0.0; 4]]),
            outputs: vec![("scores", false), ("label", true)],
        };
        let (body, binary) = infer_response(&iris(), &request, &answer);
        assert_eq!(body["id"], "r1");
        assert_eq!(body["outputs"][0]["shape"], json!([1, 3]));
        // In the model's label order, missing labels as 0.
        let scores: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
        assert!(
            (scores[0] - 0.9).abs() < 1e-6 && scores[1] == 0.0 && (scores[2] - 0.04).abs() < 1e-6
        );
        assert_eq!(body["outputs"][1]["parameters"]["binary_data_size"], 10);
        assert_eq!(binary, [6, 0, 0, 0, b's', b'e', b't', b'o', b's', b'a']);
    }
}
