//! Generated inputs (proptest) against the real worker binary over mutual TLS: arbitrary
//! single and batch requests (any model name, any floats including NaN and infinities,
//! any text) get either an answer or INVALID_ARGUMENT / NOT_FOUND naming the field, never
//! another code, and the worker stays up. Cases: `IHUB_FUZZ_CASES` (default 200 per
//! property; `make fuzz` runs more).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Worker, model_subset};
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{FeatureRow, PredictBatchRequest, PredictRequest, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use tonic::transport::Channel;

fn runner() -> TestRunner {
    let cases = std::env::var("IHUB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("iris".to_string()),
        Just("sentiment".to_string()),
        Just("wine".to_string()),
        ".{0,70}",
    ]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        -10.0f32..10.0,
        Just(f32::NAN),
        Just(f32::INFINITY),
    ]
}

fn features() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        proptest::collection::vec(float(), 0..20),
        proptest::collection::vec(-10.0f32..10.0, 4..=4),
        proptest::collection::vec(-10.0f32..10.0, 13..=13),
    ]
}

fn prompt() -> impl Strategy<Value = String> {
    prop_oneof![".{0,200}", "[a-z ]{1,40}", Just(String::new())]
}

/// An answer is a distribution; a refusal is INVALID_ARGUMENT (naming a field) or
/// NOT_FOUND.
fn check<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    answered: impl Fn(&T) -> bool,
) -> Result<(), TestCaseError> {
    match result {
        Ok(response) => prop_assert!(answered(response.get_ref()), "a malformed answer"),
        Err(status) => match status.code() {
            Code::InvalidArgument => {
                let fields = inferencehub_proto::field_errors(&status);
                prop_assert!(
                    !fields.is_empty() && fields.iter().all(|f| !f.field.is_empty()),
                    "INVALID_ARGUMENT naming no field: {status:?}"
                );
            }
            Code::NotFound => {}
            other => prop_assert!(false, "unexpected {other:?}: {}", status.message()),
        },
    }
    Ok(())
}

fn sane(p: &inferencehub_proto::pb::PredictResponse) -> bool {
    (!p.label.is_empty() && (0.0..=1.0).contains(&p.probability)) || !p.values.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_requests_get_an_answer_or_a_named_field() {
    let dir = model_subset(&["iris", "sentiment", "wine"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let channel: Channel = worker.channel().await;
    let handle = tokio::runtime::Handle::current();

    let single = (
        model_name(),
        proptest::option::of(features()),
        proptest::option::of(prompt()),
    );
    let client = ModelInferenceClient::new(channel.clone());
    let h = handle.clone();
    tokio::task::spawn_blocking(move || {
        runner()
            .run(&single, |(model_name, features, prompt)| {
                let request = PredictRequest {
                    model_name,
                    features: features.unwrap_or_default(),
                    prompt: prompt.unwrap_or_default(),
                    ..Default::default()
                };
                let mut client = client.clone();
                check(h.block_on(client.predict(request)), sane)
            })
            .unwrap();
    })
    .await
    .unwrap();

    let batch = (
        model_name(),
        proptest::collection::vec(prompt(), 0..5),
        proptest::collection::vec(features(), 0..5),
    );
    let client = ModelInferenceClient::new(channel.clone());
    let h = handle.clone();
    tokio::task::spawn_blocking(move || {
        runner()
            .run(&batch, |(model_name, prompts, rows)| {
                let n = prompts.len() + rows.len();
                let request = PredictBatchRequest {
                    model_name,
                    prompts,
                    rows: rows
                        .into_iter()
                        .map(|features| FeatureRow { features })
                        .collect(),
                    ..Default::default()
                };
                let mut client = client.clone();
                check(h.block_on(client.predict_batch(request)), |r| {
                    r.results.len() == n && r.results.iter().all(sane)
                })
            })
            .unwrap();
    })
    .await
    .unwrap();

    // Still serving, still right.
    let mut client = worker.client().await;
    let answer = client
        .predict(PredictRequest {
            model_name: "iris".into(),
            features: vec![5.1, 3.5, 1.4, 0.2],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().label, "setosa");
}

/// One generated tensor: a name the models take (or not), a datatype (or garbage), a
/// shape of small (sometimes negative or huge) dimensions, and elements of any length.
fn tensor() -> impl Strategy<Value = Tensor> {
    let name = prop_oneof![
        Just("age".to_string()),
        Just("income".to_string()),
        Just("city".to_string()),
        Just("features".to_string()),
        ".{0,12}",
    ];
    let datatype = prop_oneof![
        Just("FP32".to_string()),
        Just("BYTES".to_string()),
        Just("FP16".to_string()),
        Just("BOOL".to_string()),
        Just("INT64".to_string()),
        "[A-Z0-9]{0,6}",
    ];
    let dim = prop_oneof![1i64..4, Just(0), Just(-1), Just(i64::MAX)];
    (
        name,
        datatype,
        proptest::collection::vec(dim, 0..4),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..6),
    )
        .prop_map(|(name, datatype, shape, raw, bytes)| Tensor {
            name,
            datatype,
            shape,
            raw_contents: raw,
            bytes_contents: bytes,
        })
}

/// The named-columns model's inputs for `n` rows: `age` and `income` both the f32 of `bits`,
/// `city` as given.
fn columns_tensors(n: i64, bits: [u8; 4], city: &[u8]) -> Vec<Tensor> {
    let raw: Vec<u8> = (0..n).flat_map(|_| bits).collect();
    let number = |name: &str| Tensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![n, 1],
        raw_contents: raw.clone(),
        bytes_contents: Vec::new(),
    };
    vec![
        number("age"),
        number("income"),
        Tensor {
            name: "city".into(),
            datatype: "BYTES".into(),
            shape: vec![n, 1],
            raw_contents: Vec::new(),
            bytes_contents: vec![city.to_vec(); n as usize],
        },
    ]
}

/// A well-formed request for the named-columns model with one part broken at random.
fn columns_request() -> impl Strategy<Value = Vec<Tensor>> {
    (
        1i64..4,
        "[a-z\u{0}\u{e9}]{0,6}",
        any::<[u8; 4]>(),
        0usize..4,
    )
        .prop_map(|(n, city, bits, broken)| {
            let mut tensors = columns_tensors(n, bits, city.as_bytes());
            if broken < 3 {
                tensors[broken].shape.push(1);
            }
            tensors
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_tensors_get_an_answer_or_a_named_field() {
    let dir = model_subset(&["columns", "digits", "iris"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let channel: Channel = worker.channel().await;
    let handle = tokio::runtime::Handle::current();
    let model = prop_oneof![
        Just("columns".to_string()),
        Just("digits".to_string()),
        Just("iris".to_string()),
    ];
    let requests = (
        model,
        prop_oneof![proptest::collection::vec(tensor(), 0..4), columns_request(),],
        proptest::collection::vec(
            prop_oneof![Just("output_label".to_string()), ".{0,8}"],
            0..2,
        ),
    );
    let client = ModelInferenceClient::new(channel.clone());
    let mut fixed = client.clone();
    tokio::task::spawn_blocking(move || {
        runner()
            .run(&requests, |(model_name, inputs, outputs)| {
                let request = PredictBatchRequest {
                    model_name,
                    inputs,
                    outputs,
                    ..Default::default()
                };
                let mut client = client.clone();
                let result = handle.block_on(client.predict_batch(request));
                check(result, |r| {
                    !r.results.is_empty() && r.results.iter().all(sane)
                })
            })
            .unwrap();
    })
    .await
    .unwrap();
    // A well-formed request of the generated kind is answered. (Fixed here rather than
    // counted among the random ones: about one generated case in 30 is well-formed, so 200
    // of them held none about once in a few hundred runs.)
    let well_formed = PredictBatchRequest {
        model_name: "columns".into(),
        inputs: columns_tensors(2, 41f32.to_le_bytes(), b"paris"),
        ..Default::default()
    };
    let answer = fixed.predict_batch(well_formed).await.unwrap().into_inner();
    assert!(!answer.results.is_empty() && answer.results.iter().all(sane));

    // Still serving, still right.
    let mut client = worker.client().await;
    let answer = client
        .predict(PredictRequest {
            model_name: "iris".into(),
            features: vec![5.1, 3.5, 1.4, 0.2],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().label, "setosa");
}
