//! ONNX graphs whose inputs are named tensors (written by
//! `tools/python/make_onnx_tensor_fixtures.py`): a scikit-learn pipeline over named columns
//! with string categories, and a graph taking one input of every element type. Each must
//! give its reference's answers, loaded directly and served over mutual-TLS gRPC, and a
//! request that does not fit the signature is refused naming the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Worker, cpu_options, linked};
use inferencehub_proto::pb::{PredictBatchRequest, PredictRequest, Tensor, TensorInfo};
use inferencehub_proto::{field_errors, tensor};
use inferencehub_worker::models::{ModelInput, load_model};
use serde::Deserialize;
use serde_json::Value;
use tonic::Code;

/// A tensor as `expected.json` writes it.
#[derive(Debug, Clone, Deserialize)]
struct Json {
    datatype: String,
    shape: Vec<i64>,
    data: Vec<Value>,
}

impl Json {
    /// As the contract's tensor named `name`.
    fn tensor(&self, name: &str) -> Tensor {
        let mut t = Tensor {
            name: name.into(),
            datatype: self.datatype.clone(),
            shape: self.shape.clone(),
            ..Default::default()
        };
        for v in &self.data {
            let raw = &mut t.raw_contents;
            match self.datatype.as_str() {
                "BYTES" => t
                    .bytes_contents
                    .push(v.as_str().unwrap().as_bytes().to_vec()),
                "BOOL" => raw.push(u8::from(v.as_bool().unwrap())),
                "UINT8" => raw.push(v.as_u64().unwrap() as u8),
                "INT8" => raw.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
                "INT32" => raw.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
                "INT64" => raw.extend(v.as_i64().unwrap().to_le_bytes()),
                "FP16" => raw.extend(half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
                "FP32" => raw.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
                "FP64" => raw.extend(v.as_f64().unwrap().to_le_bytes()),
                other => panic!("{other}"),
            }
        }
        t
    }
}

#[derive(Debug, Deserialize)]
struct Expected {
    inputs: BTreeMap<String, Json>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    probabilities: Vec<Vec<f64>>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    outputs: BTreeMap<String, Json>,
}

impl Expected {
    fn tensors(&self) -> Vec<Tensor> {
        self.inputs.iter().map(|(n, t)| t.tensor(n)).collect()
    }

    fn rows(&self) -> usize {
        self.inputs.values().next().unwrap().shape[0] as usize
    }

    /// Input `row` as the model takes it: one tensor per input in the signature's order.
    fn row(&self, specs: &[TensorInfo], row: usize) -> Vec<Tensor> {
        let n = self.rows();
        tensor::in_order(specs, self.tensors())
            .into_iter()
            .map(|t| tensor::split(t, n).remove(row))
            .collect()
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-tensors")
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixtures_dir().join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.raw_contents
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn a_pipeline_over_named_columns_matches_scikit_learn() {
    let name = "sklearn-column-transformer";
    let want = expected(name);
    let mut model = load_model(&fixtures_dir().join(name), name, &cpu_options()).unwrap();
    let signature: Vec<(&str, &str, &[i64])> = model
        .info
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        signature,
        [
            ("age", "FP32", &[-1, 1][..]),
            ("income", "FP32", &[-1, 1][..]),
            ("city", "BYTES", &[-1, 1][..]),
        ]
    );
    assert_eq!(model.info.feature_count, 0, "named inputs only");
    assert_eq!(model.info.labels, want.classes);
    let specs = model.info.inputs.clone();
    let inputs: Vec<ModelInput> = (0..want.rows())
        .map(|r| ModelInput::Tensors(want.row(&specs, r)))
        .collect();
    let out = model.model.forward(&inputs).unwrap();
    for (r, o) in out.iter().enumerate() {
        for (got, want) in o.row.iter().zip(&want.probabilities[r]) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-5,
                "row {r}: {got} vs {want}"
            );
        }
        let best = inferencehub_worker::models::argmax(&o.row).0;
        assert_eq!(model.info.labels[best], want.labels[r], "row {r}");
        // The exporter's own label output, returned by name.
        let label = o.tensors.iter().find(|t| t.name == "output_label").unwrap();
        assert_eq!(
            (label.datatype.as_str(), label.shape.as_slice()),
            ("BYTES", &[1][..])
        );
        assert_eq!(label.bytes_contents, [want.labels[r].as_bytes()]);
    }
}

#[test]
fn every_element_type_goes_in_and_comes_out_unchanged() {
    let name = "typed-graph";
    let want = expected(name);
    let mut model = load_model(&fixtures_dir().join(name), name, &cpu_options()).unwrap();
    let types: BTreeMap<&str, &str> = model
        .info
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str()))
        .collect();
    for (input, json) in &want.inputs {
        assert_eq!(types[input.as_str()], json.datatype, "{input}");
    }
    let seq = model.info.inputs.iter().find(|t| t.name == "seq").unwrap();
    assert_eq!(seq.shape, [-1, -1], "a dynamic axis is listed as -1");
    let offered: Vec<&str> = model.info.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        offered,
        ["total", "half_echo", "flags_echo", "tag_echo", "seq_total"]
    );
    let specs = model.info.inputs.clone();
    let inputs: Vec<ModelInput> = (0..want.rows())
        .map(|r| ModelInput::Tensors(want.row(&specs, r)))
        .collect();
    let out = model.model.forward(&inputs).unwrap();
    for (output, json) in &want.outputs {
        let joined = tensor::concat(
            out.iter()
                .map(|o| o.tensors.iter().find(|t| &t.name == output).unwrap()),
        )
        .unwrap();
        let reference = json.tensor(output);
        assert_eq!(joined.datatype, reference.datatype, "{output}");
        assert_eq!(joined.shape, reference.shape, "{output}");
        if joined.datatype == "FP32" {
            for (g, w) in f32s(&joined).iter().zip(f32s(&reference)) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{output}: {g} vs {w}"
                );
            }
        } else {
            assert_eq!(joined, reference, "{output}");
        }
    }
    // The served output is `total`, a regression of two values.
    let total = f32s(&want.outputs["total"].tensor("total"));
    for (r, o) in out.iter().enumerate() {
        assert_eq!(o.row.len(), 2);
        for (g, w) in o.row.iter().zip(&total[2 * r..2 * r + 2]) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0));
        }
    }
}

#[tokio::test]
async fn named_tensors_are_served_over_grpc_and_checked_against_the_signature() {
    let models = linked(
        &fixtures_dir(),
        &["sklearn-column-transformer", "typed-graph"],
    );
    let worker = Worker::serving(models.path(), &["--max-wait", "5ms"]).await;
    let mut client = worker.client().await;
    let listed = common::models(&mut client).await;
    let pipeline = listed
        .iter()
        .find(|m| m.name == "sklearn-column-transformer")
        .unwrap();
    assert_eq!(pipeline.inputs.len(), 3);
    assert_eq!(pipeline.outputs[0].name, "output_label");

    // The pipeline: every row in one call, answered like scikit-learn.
    let want = expected("sklearn-column-transformer");
    let batch = client
        .predict_batch(PredictBatchRequest {
            model_name: "sklearn-column-transformer".into(),
            inputs: want.tensors(),
            outputs: vec!["output_label".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), want.rows());
    for (r, result) in batch.results.iter().enumerate() {
        assert_eq!(result.label, want.labels[r]);
        for (s, p) in result.scores.iter().zip(&want.probabilities[r]) {
            assert!((f64::from(s.probability) - p).abs() <= 1e-5);
        }
        assert_eq!(result.outputs.len(), 1);
        assert_eq!(
            result.outputs[0].bytes_contents,
            [want.labels[r].as_bytes()]
        );
    }

    // Every element type, in a single Predict of the first row.
    let typed = expected("typed-graph");
    let specs = listed
        .iter()
        .find(|m| m.name == "typed-graph")
        .unwrap()
        .inputs
        .clone();
    let one = client
        .predict(PredictRequest {
            model_name: "typed-graph".into(),
            inputs: typed.row(&specs, 0),
            outputs: vec!["tag_echo".into(), "half_echo".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let total = f32s(&typed.outputs["total"].tensor("total"));
    assert!((one.values[0] - total[0]).abs() <= 1e-5 * total[0].abs().max(1.0));
    let names: Vec<&str> = one.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tag_echo", "half_echo"]);
    assert_eq!(
        one.outputs[0].bytes_contents,
        [typed.inputs["tag"].data[0].as_str().unwrap().as_bytes()]
    );

    // Sequences of two lengths at once: each batch holds one length, every answer right.
    let seq_call = |len: i64| {
        let mut inputs = typed.row(&specs, 0);
        let seq = inputs.iter_mut().find(|t| t.name == "seq").unwrap();
        seq.shape = vec![1, len];
        seq.raw_contents = (1..=len).flat_map(|v| v.to_le_bytes()).collect();
        let mut client = client.clone();
        async move {
            client
                .predict(PredictRequest {
                    model_name: "typed-graph".into(),
                    inputs,
                    outputs: vec!["seq_total".into()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let answers = futures::future::join_all([2, 7, 2, 7, 3].map(seq_call)).await;
    for (len, answer) in [2i64, 7, 2, 7, 3].iter().zip(&answers) {
        assert_eq!(f32s(&answer.outputs[0]), [(len * (len + 1) / 2) as f32]);
    }

    // What does not fit the signature is refused, naming the input and its member.
    let refused = |inputs: Vec<Tensor>| {
        let mut client = client.clone();
        async move {
            let status = client
                .predict_batch(PredictBatchRequest {
                    model_name: "typed-graph".into(),
                    inputs,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            field_errors(&status)
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        }
    };
    let all = typed.tensors();
    let at = |name: &str| all.iter().position(|t| t.name == name).unwrap();
    let mut wrong_type = all.clone();
    wrong_type[at("big")].datatype = "INT32".into();
    assert_eq!(
        refused(wrong_type).await,
        [format!("inputs[{}].datatype", at("big"))]
    );
    let mut missing = all.clone();
    missing.remove(at("wide"));
    assert_eq!(refused(missing).await, ["inputs"]);
    let mut nan = all.clone();
    nan[at("half")].raw_contents[2..4].copy_from_slice(&half::f16::NAN.to_le_bytes());
    assert_eq!(
        refused(nan).await,
        [format!("inputs[{}].raw_contents[1]", at("half"))]
    );
    let mut ragged = all.clone();
    ragged[at("flags")].shape = vec![2, 4];
    assert_eq!(
        refused(ragged).await,
        [format!("inputs[{}].shape", at("flags"))]
    );
    let mut not_bool = all.clone();
    not_bool[at("flags")].raw_contents[0] = 7;
    assert_eq!(
        refused(not_bool).await,
        [format!("inputs[{}].raw_contents[0]", at("flags"))]
    );
    let mut unknown = all;
    unknown[0].name = "nope".into();
    let fields = refused(unknown).await;
    assert_eq!(fields[0], "inputs[0].name");

    // Features are refused with a pointer to the named inputs.
    let status = client
        .predict(PredictRequest {
            model_name: "sklearn-column-transformer".into(),
            features: vec![1.0, 2.0],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("named inputs"),
        "{}",
        status.message()
    );
}
