//! ONNX exports from the real exporters (scikit-learn, XGBoost, LightGBM, PyTorch, Keras;
//! written by `tools/fixtures/make_onnx_fixtures.py`) must give each framework's own
//! predictions: loaded directly, and served over mutual-TLS gRPC by the worker binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{Worker, cpu_options, linked};
use inferencehub_proto::pb::{FeatureRow, ModelTask, PredictBatchRequest, PredictRequest};
use inferencehub_worker::models::{ModelInput, load_model};
use serde::Deserialize;
use tonic::Code;

/// What the framework itself predicted for held-out rows.
#[derive(Debug, Deserialize)]
struct Expected {
    task: String,
    inputs: Vec<Vec<f32>>,
    #[serde(default)]
    probabilities: Vec<Vec<f64>>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<f64>>,
}

/// Probabilities within this of the framework's.
const PROBABILITY_TOLERANCE: f64 = 1e-5;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn fixtures() -> Vec<(String, PathBuf, Expected)> {
    let mut all: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let expected =
                serde_json::from_str(&std::fs::read_to_string(p.join("expected.json")).unwrap())
                    .unwrap();
            (name, p, expected)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(all.len() >= 15, "fixtures missing: {}", all.len());
    all
}

/// Relative tolerance for regression values (their scale is the target's, ~100s here).
fn close_value(got: f32, want: f64) -> bool {
    (f64::from(got) - want).abs() <= 1e-5 * want.abs().max(1.0)
}

#[test]
fn every_export_matches_its_framework() {
    let mut report = Vec::new();
    for (name, dir, expected) in fixtures() {
        let mut model = load_model(&dir, &name, &cpu_options())
            .unwrap_or_else(|e| panic!("{name} does not load: {e:#}"));
        let info = model.info.clone();
        assert_eq!(
            info.feature_count as usize,
            expected.inputs[0].len(),
            "{name}"
        );
        let inputs: Vec<ModelInput> = expected
            .inputs
            .iter()
            .map(|row| ModelInput::Features(row.clone()))
            .collect();
        let out = model
            .model
            .forward(&inputs)
            .unwrap()
            .into_iter()
            .map(|o| o.row)
            .collect::<Vec<_>>();
        assert_eq!(out.len(), inputs.len(), "{name}");
        // The batch of all rows and each row alone agree: no state leaks between rows (to
        // the last bits a matrix product may order its sums in differently per batch size).
        let alone = model
            .model
            .forward(&inputs[3..4])
            .unwrap()
            .into_iter()
            .map(|o| o.row)
            .collect::<Vec<_>>();
        assert_eq!(alone[0].len(), out[3].len(), "{name}");
        for (a, b) in alone[0].iter().zip(&out[3]) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{name}: row 3 alone differs from in a batch: {a} vs {b}"
            );
        }
        let mut worst = 0.0f64;
        match expected.task.as_str() {
            "classification" => {
                assert_eq!(info.task(), ModelTask::Classification, "{name}");
                for (i, (got, want)) in out.iter().zip(&expected.probabilities).enumerate() {
                    assert_eq!(got.len(), want.len(), "{name} row {i}: width");
                    for (g, w) in got.iter().zip(want) {
                        worst = worst.max((f64::from(*g) - w).abs());
                    }
                    let (best, _) = inferencehub_worker::models::argmax(got);
                    assert_eq!(
                        info.labels[best], expected.labels[i],
                        "{name} row {i}: label differs from the framework's predict"
                    );
                }
                assert!(
                    worst <= PROBABILITY_TOLERANCE,
                    "{name}: probabilities differ by up to {worst:e}"
                );
            }
            "regression" => {
                assert_eq!(info.task(), ModelTask::Regression, "{name}");
                assert!(info.labels.is_empty());
                for (i, (got, want)) in out.iter().zip(&expected.values).enumerate() {
                    assert_eq!(got.len(), want.len(), "{name} row {i}: width");
                    for (g, w) in got.iter().zip(want) {
                        assert!(close_value(*g, *w), "{name} row {i}: {g} vs {w}");
                        worst = worst.max((f64::from(*g) - w).abs() / w.abs().max(1.0));
                    }
                }
            }
            other => panic!("{name}: unknown task {other}"),
        }
        report.push(format!(
            "{name:40} {:24} worst {worst:.1e}",
            info.architecture
        ));
    }
    println!("{}", report.join("\n"));
}

/// `bytes` with every `from` replaced by `to` (same length).
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(
        found > 0,
        "{} not in the file",
        String::from_utf8_lossy(from)
    );
    out
}

#[test]
fn an_unsupported_operator_fails_the_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("sklearn-random-forest");
    let model_dir = dir.path().join("forest");
    std::fs::create_dir(&model_dir).unwrap();
    // Rename the tree operator inside the protobuf (every occurrence: node names may hold
    // it too); same length, so the file stays valid.
    let bytes = std::fs::read(src.join("model.onnx")).unwrap();
    std::fs::write(
        model_dir.join("model.onnx"),
        replace_all(&bytes, b"TreeEnsembleClassifier", b"TreeEnsembleClassifiez"),
    )
    .unwrap();
    let err = match load_model(&model_dir, "forest", &cpu_options()) {
        Ok(_) => panic!("an unknown operator must fail the load"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("TreeEnsembleClassifiez"), "{err}");
    assert!(err.contains("forest"), "{err}");

    // A neural network with an operator ONNX Runtime lacks names it the same way.
    let src = fixtures_dir().join("pytorch-mlp");
    let bytes = std::fs::read(src.join("model.onnx")).unwrap();
    let edited = replace_all(&bytes, b"Relu", b"Relx");
    let net_dir = dir.path().join("net");
    std::fs::create_dir(&net_dir).unwrap();
    std::fs::write(net_dir.join("model.onnx"), edited).unwrap();
    std::fs::copy(src.join("model.json"), net_dir.join("model.json")).unwrap();
    let err = match load_model(&net_dir, "net", &cpu_options()) {
        Ok(_) => panic!("an unknown operator must fail the load"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("Relx") && err.contains("net"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_fails_the_load_naming_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("two");
    std::fs::create_dir(&model_dir).unwrap();
    std::fs::write(model_dir.join("model.onnx"), b"not a protobuf at all").unwrap();
    let err = match load_model(&model_dir, "two", &cpu_options()) {
        Ok(_) => panic!("garbage must not load"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("two"), "{err}");
}

#[tokio::test]
async fn exports_are_served_over_grpc_with_their_signature() {
    // Every fixture, served by one worker.
    let all_names: Vec<String> = fixtures().into_iter().map(|f| f.0).collect();
    let names: Vec<&str> = all_names.iter().map(String::as_str).collect();
    let models = linked(&fixtures_dir(), &names);
    let worker = Worker::serving(models.path(), &["--max-wait", "1ms"]).await;
    let mut client = worker.client().await;

    let listed = common::models(&mut client).await;
    assert_eq!(listed.len(), names.len());
    let all = fixtures();
    for (name, _, expected) in all.iter().filter(|f| names.contains(&f.0.as_str())) {
        let info = listed.iter().find(|m| &m.name == name).unwrap();
        let input = info.input.as_ref().unwrap();
        assert_eq!(info.feature_count as usize, expected.inputs[0].len());
        // Images keep their declared layout; the rows are their elements in row-major order.
        if name == "pytorch-digits-cnn" {
            assert_eq!(input.shape, [-1, 1, 8, 8]);
        }
        assert_eq!(input.shape[0], -1, "{name}");
        let elements: i64 = input.shape[1..].iter().product();
        assert_eq!(elements as usize, expected.inputs[0].len(), "{name}");
        assert_eq!(input.datatype, "FP32");

        // One row through Predict, all rows through PredictBatch.
        let one = client
            .predict(PredictRequest {
                model_name: name.clone(),
                features: expected.inputs[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let batch = client
            .predict_batch(PredictBatchRequest {
                model_name: name.clone(),
                rows: expected
                    .inputs
                    .iter()
                    .map(|r| FeatureRow {
                        features: r.clone(),
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(batch.len(), expected.inputs.len());
        if expected.task == "regression" {
            assert_eq!(info.task, ModelTask::Regression as i32);
            assert_eq!(info.value_count, 1);
            assert!(one.label.is_empty() && one.scores.is_empty());
            assert!(close_value(one.values[0], expected.values[0][0]));
            for (got, want) in batch.iter().zip(&expected.values) {
                assert!(close_value(got.values[0], want[0]), "{name}");
            }
        } else {
            assert_eq!(info.task, ModelTask::Classification as i32);
            assert_eq!(one.label, expected.labels[0], "{name}");
            assert!(one.values.is_empty());
            for ((got, want), label) in batch
                .iter()
                .zip(&expected.probabilities)
                .zip(&expected.labels)
            {
                assert_eq!(&got.label, label, "{name}");
                for (s, w) in got.scores.iter().zip(want) {
                    assert!((f64::from(s.probability) - w).abs() <= PROBABILITY_TOLERANCE);
                }
            }
        }

        // The signature is enforced: a wrong feature count is INVALID_ARGUMENT.
        let short = expected.inputs[0][1..].to_vec();
        let err = client
            .predict(PredictRequest {
                model_name: name.clone(),
                features: short,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        assert!(err.message().contains("features"), "{}", err.message());
    }
}

/// The ONNX Runtime library is checked when the first ONNX model loads: a missing file, or
/// a library that is not ONNX Runtime, stops the worker with the path in its log.
#[tokio::test]
async fn a_missing_or_wrong_onnxruntime_library_stops_the_worker_naming_it() {
    let models = linked(&fixtures_dir(), &["sklearn-random-forest"]);
    // Any shared library that is not ONNX Runtime: the C library this test runs on.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .expect("a C library is mapped")
        .to_string();
    for (library, says) in [
        ("/nonexistent/libonnxruntime.so.1.31.1", "not found"),
        (libc.as_str(), "OrtGetApiBase"),
    ] {
        let log = Worker::spawn(models.path(), &["--onnxruntime", library])
            .await
            .failed_log()
            .await;
        assert!(
            log.contains(library) && log.contains(says),
            "{library}: {log}"
        );
    }
}

/// Tree ensembles are input too (`tools/python/make_onnx_hostile_fixtures.py`): a tree
/// that loops back, has no root, is deeper than the limit, points at a node it does not
/// have or reads a feature the input does not have is refused at load, with the reason
/// and the model's name, before ONNX Runtime sees it (whose loader recurses: a deep enough
/// chain crashes the process). The two controls beside them, one exactly at the depth
/// limit, load and answer.
#[test]
fn hostile_tree_ensembles_are_refused_at_load_with_a_reason() {
    #[derive(Deserialize)]
    struct Verdict {
        refused: bool,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        inputs: Vec<Vec<f32>>,
        #[serde(default)]
        labels: Vec<String>,
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-hostile");
    let mut seen = (0, 0);
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let verdict: Verdict =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let loaded = load_model(&dir, &name, &cpu_options());
        if verdict.refused {
            seen.0 += 1;
            let err = match loaded {
                Ok(_) => panic!("{name} loaded"),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                err.contains(&verdict.reason) && err.contains(&name),
                "{name}: {err}"
            );
            println!("{name:18} refused: {err}");
            continue;
        }
        seen.1 += 1;
        let mut model = loaded.unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let inputs: Vec<ModelInput> = verdict
            .inputs
            .iter()
            .map(|row| ModelInput::Features(row.clone()))
            .collect();
        let out = model.model.forward(&inputs).unwrap();
        assert_eq!(out.len(), inputs.len(), "{name}");
        if model.info.labels.len() > 1 {
            for (row, want) in out.iter().zip(&verdict.labels) {
                let (best, _) = inferencehub_worker::models::argmax(&row.row);
                assert_eq!(&model.info.labels[best], want, "{name}");
            }
        }
    }
    assert_eq!(seen, (9, 3), "hostile and control fixtures");
}

/// A model whose forward pass does not come back (`spin`: its `Loop` runs a trillion steps
/// on an input holding a 1) answers that call with UNAVAILABLE once `--forward-deadline`
/// passes, turns its own health NOT_SERVING and refuses further calls at once (so the
/// gateway fails over instead of queueing to 503), while the worker's other model keeps
/// serving and the overall health stays SERVING. Before, the call waited for the caller's
/// deadline and every later call queued behind it.
#[tokio::test]
async fn a_forward_pass_past_its_deadline_turns_that_model_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let hostile = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-hostile");
    let dir = linked(&hostile, &["spin", "control-small"]);
    let worker = Worker::serving(dir.path(), &["--forward-deadline", "500ms"]).await;
    let channel = worker.channel().await;
    let mut client =
        inferencehub_proto::pb::model_inference_client::ModelInferenceClient::new(channel.clone());
    let health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_string();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    let call = |model: &str, value: f32, features: usize| {
        let mut request = tonic::Request::new(PredictRequest {
            features: vec![value; features],
            model_name: model.into(),
            ..Default::default()
        });
        request.set_timeout(std::time::Duration::from_secs(20));
        request
    };
    // Both models serve; each has its own health.
    client.predict(call("spin", 0.0, 1)).await.unwrap();
    assert_eq!(status("spin").await.unwrap(), 1, "SERVING");
    assert_eq!(status("control-small").await.unwrap(), 1, "SERVING");

    let started = std::time::Instant::now();
    let stuck = client.predict(call("spin", 1.0, 1)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(stuck.code(), Code::Unavailable, "{stuck:?}");
    assert!(stuck.message().contains("deadline"), "{stuck:?}");
    assert!(
        waited < std::time::Duration::from_secs(15),
        "answered after {waited:?}, not at the forward deadline"
    );
    // Its health turns NOT_SERVING (checked a few times: the health view follows within
    // a tenth of a second), a further call is refused at once, the other model serves.
    let mut spin_health = 0;
    for _ in 0..50 {
        spin_health = status("spin").await.unwrap();
        if spin_health == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(spin_health, 2, "NOT_SERVING");
    let refused = client.predict(call("spin", 0.0, 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("not serving"), "{refused:?}");
    let other = client
        .predict(call("control-small", 0.1, 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.label, "1");
    assert_eq!(status("control-small").await.unwrap(), 1, "SERVING");
    assert_eq!(
        status("").await.unwrap(),
        1,
        "the worker itself still SERVING"
    );
    // Reported.
    assert_eq!(
        worker
            .metric("inferencehub_worker_model_stuck{model=\"spin\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        worker
            .metric("inferencehub_worker_forward_stuck_total{model=\"spin\"}")
            .await,
        Some(1.0)
    );
    assert!(
        worker.log().contains("ran past its deadline"),
        "{}",
        worker.log()
    );
}
