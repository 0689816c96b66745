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

/// The served versions of `forest` and the UNAVAILABLE ones with their reasons.
async fn index(
    client: &mut inferencehub_proto::pb::model_inference_client::ModelInferenceClient<
        tonic::transport::Channel,
    >,
) -> (Vec<(String, bool)>, Vec<(String, String)>) {
    let listed = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let ready = listed
        .iter()
        .filter(|m| m.state.is_empty())
        .map(|m| (m.version.clone(), m.default_version))
        .collect();
    let broken = listed
        .iter()
        .filter(|m| m.state == "UNAVAILABLE")
        .map(|m| (m.version.clone(), m.reason.clone()))
        .collect();
    (ready, broken)
}

/// `--model-control poll`: a version added while traffic flows takes over once loaded, a
/// broken one is listed UNAVAILABLE with the loader's message while the others serve, and a
/// removed one unloads; no request fails along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_repository_changes_under_traffic_without_a_failed_request() {
    let root = tempfile::tempdir().unwrap();
    let forest = root.path().join("forest");
    std::fs::create_dir(&forest).unwrap();
    std::fs::write(
        forest.join("model.json"),
        r#"{"version_policy": {"all": {}}}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink(fixture("xgboost-binary"), forest.join("1")).unwrap();
    let worker = Worker::serving(
        root.path(),
        &["--model-control", "poll", "--poll-interval", "100ms"],
    )
    .await;
    let mut client = worker.client().await;
    assert_eq!(index(&mut client).await.0, [("1".to_string(), true)]);

    // Traffic without a version throughout: every answer names the version it came from.
    let row = expected("xgboost-binary").inputs[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (mut client, stop, row) = (client.clone(), stop.clone(), row.clone());
        tokio::spawn(async move {
            let (mut answered, mut failed, mut seen) =
                (0, Vec::new(), std::collections::BTreeSet::new());
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let r = client
                    .predict(PredictRequest {
                        model_name: "forest".into(),
                        features: row.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(r) => {
                        answered += 1;
                        seen.insert(r.into_inner().model_version);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (answered, failed, seen)
        })
    };
    let watcher = client.clone();
    let wait_for = |want: &'static str| {
        let mut client = watcher.clone();
        async move {
            for _ in 0..300 {
                let (ready, _) = index(&mut client).await;
                if ready.iter().any(|(v, default)| v == want && *default) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("version {want} never became the default");
        }
    };

    std::os::unix::fs::symlink(fixture("lightgbm-binary"), forest.join("2")).unwrap();
    wait_for("2").await;
    // A broken version 3: listed with the loader's message, version 2 still the default.
    std::fs::create_dir(forest.join("3")).unwrap();
    std::fs::write(forest.join("3").join("model.onnx"), b"not an onnx graph").unwrap();
    let mut reason = String::new();
    for _ in 0..300 {
        let (ready, broken) = index(&mut client).await;
        if let Some((_, why)) = broken.iter().find(|(v, _)| v == "3") {
            reason = why.clone();
            assert!(ready.contains(&("2".to_string(), true)), "{ready:?}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reason.contains("ONNX"), "the loader's message: {reason:?}");
    // Version 2 removed: version 1 takes over again.
    std::fs::remove_file(forest.join("2")).unwrap();
    wait_for("1").await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, failed, seen) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {answered} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(answered > 10, "{answered}");
    assert!(seen.contains("1") && seen.contains("2"), "{seen:?}");
}

/// `--model-control explicit`: the admin RPCs load and unload models, and only a
/// certificate named in `--tls-admin-names` may call them (the gateway's and the health
/// function's may not; the admin's may not predict).
#[tokio::test]
async fn admin_rpcs_load_and_unload_models_and_refuse_other_identities() {
    use inferencehub_devkit::certs::{GATEWAY_CLIENT_NAME, HEALTH_CLIENT_NAME};
    use inferencehub_proto::pb::model_repository_client::ModelRepositoryClient;
    use inferencehub_proto::pb::{LoadModelRequest, RepositoryIndexRequest, UnloadModelRequest};

    let root = tempfile::tempdir().unwrap();
    let forest = root.path().join("forest");
    std::fs::create_dir(&forest).unwrap();
    std::os::unix::fs::symlink(fixture("xgboost-binary"), forest.join("1")).unwrap();
    let names = format!("--tls-client-names={GATEWAY_CLIENT_NAME}");
    let health = format!("--tls-health-names={HEALTH_CLIENT_NAME}");
    let worker = Worker::serving(
        root.path(),
        &[
            "--model-control",
            "explicit",
            &names,
            &health,
            "--tls-admin-names=ops-admin",
        ],
    )
    .await;
    let (cert, key) = (
        worker.dir.path().join("admin.pem"),
        worker.dir.path().join("admin.key"),
    );
    worker
        .ca
        .issue_client("ops-admin", None, &cert, &key)
        .unwrap();
    let admin_channel = worker
        .channel_with(&worker.certs.ca, Some((&cert, &key)))
        .await;
    let mut admin = ModelRepositoryClient::new(admin_channel.clone());

    // Other identities are refused.
    let as_gateway = ModelRepositoryClient::new(worker.channel().await)
        .repository_index(RepositoryIndexRequest {})
        .await
        .unwrap_err();
    assert_eq!(as_gateway.code(), Code::PermissionDenied);
    let health_channel = worker
        .channel_with(
            &worker.certs.ca,
            Some((&worker.certs.health_cert, &worker.certs.health_key)),
        )
        .await;
    let as_health = ModelRepositoryClient::new(health_channel)
        .repository_index(RepositoryIndexRequest {})
        .await
        .unwrap_err();
    assert_eq!(as_health.code(), Code::PermissionDenied);
    let admin_predicts =
        inferencehub_proto::pb::model_inference_client::ModelInferenceClient::new(admin_channel)
            .list_models(ListModelsRequest {})
            .await
            .unwrap_err();
    assert_eq!(admin_predicts.code(), Code::PermissionDenied);

    // A new version is not served until LoadModel reads the folder again.
    let index = admin
        .repository_index(RepositoryIndexRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models[0].state, "READY");
    std::os::unix::fs::symlink(fixture("lightgbm-binary"), forest.join("2")).unwrap();
    let mut client = worker.client().await;
    let default_version = |listed: Vec<inferencehub_proto::pb::ModelInfo>| {
        listed
            .into_iter()
            .find(|m| m.default_version)
            .map(|m| m.version)
    };
    let listed = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(default_version(listed), Some("1".into()));
    let loaded = admin
        .load_model(LoadModelRequest {
            model_name: "forest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_version(loaded.versions), Some("2".into()));

    // Unloaded: gone until loaded again.
    admin
        .unload_model(UnloadModelRequest {
            model_name: "forest".into(),
        })
        .await
        .unwrap();
    let gone = client
        .predict(PredictRequest {
            model_name: "forest".into(),
            features: expected("xgboost-binary").inputs[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let index = admin
        .repository_index(RepositoryIndexRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.unloaded, ["forest"]);
    admin
        .load_model(LoadModelRequest {
            model_name: "forest".into(),
        })
        .await
        .unwrap();
    let listed = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(default_version(listed), Some("2".into()));
    let unknown = admin
        .load_model(LoadModelRequest {
            model_name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
