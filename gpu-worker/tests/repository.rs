//! A model repository with versions side by side (`name/<version>/`): the version policy
//! picks what is served, every served version answers when named and the latest when not,
//! and every answer names the version that computed it. Two real exports stand in for two
//! trainings of one model: XGBoost as version 1, LightGBM as version 2 (same 30 features).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::Worker;
use inferencehub_proto::pb::{ListModelsRequest, PredictRequest};
use serde::Deserialize;
use tonic::Code;

#[derive(Deserialize)]
struct Expected {
    inputs: Vec<Vec<f32>>,
    probabilities: Vec<Vec<f64>>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

fn expected(name: &str) -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

/// `forest/1` = the XGBoost export, `forest/2` = the LightGBM one, with `policy` (if any).
fn repository(policy: Option<&str>) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let forest = root.path().join("forest");
    std::fs::create_dir(&forest).unwrap();
    std::os::unix::fs::symlink(fixture("xgboost-binary"), forest.join("1")).unwrap();
    std::os::unix::fs::symlink(fixture("lightgbm-binary"), forest.join("2")).unwrap();
    if let Some(policy) = policy {
        std::fs::write(forest.join("model.json"), policy).unwrap();
    }
    root
}

#[tokio::test]
async fn every_served_version_answers_when_named_and_the_latest_when_not() {
    let repo = repository(Some(r#"{"version_policy": {"all": {}}}"#));
    let worker = Worker::serving(repo.path(), &["--max-wait", "1ms"]).await;
    let mut client = worker.client().await;
    let listed = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let versions: Vec<(&str, bool)> = listed
        .iter()
        .map(|m| (m.version.as_str(), m.default_version))
        .collect();
    assert_eq!(versions, [("1", false), ("2", true)]);
    assert!(listed.iter().all(|m| m.digest.len() == 12));
    assert_ne!(listed[0].digest, listed[1].digest);

    let row = expected("xgboost-binary").inputs[0].clone();
    let answer = |version: &str| {
        let mut client = client.clone();
        let features = row.clone();
        let version = version.to_string();
        async move {
            client
                .predict(PredictRequest {
                    model_name: "forest".into(),
                    features,
                    model_version: version,
                    ..Default::default()
                })
                .await
        }
    };
    for (version, framework, named) in [
        ("1", "xgboost-binary", "1"),
        ("2", "lightgbm-binary", "2"),
        ("", "lightgbm-binary", "2"),
    ] {
        let got = answer(version).await.unwrap().into_inner();
        assert_eq!(got.model_version, named);
        let want = &expected(framework).probabilities[0];
        for (s, w) in got.scores.iter().zip(want) {
            assert!(
                (f64::from(s.probability) - w).abs() <= 1e-5,
                "{version}: {framework}"
            );
        }
    }
    let status = answer("3").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("it serves 1, 2"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn without_a_policy_only_the_latest_version_is_served() {
    let repo = repository(None);
    let worker = Worker::serving(repo.path(), &[]).await;
    let mut client = worker.client().await;
    let listed = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let versions: Vec<&str> = listed.iter().map(|m| m.version.as_str()).collect();
    assert_eq!(versions, ["2"]);
}
