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
    let listed = common::models(&mut client).await;
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
    let listed = common::models(&mut client).await;
    let versions: Vec<&str> = listed.iter().map(|m| m.version.as_str()).collect();
    assert_eq!(versions, ["2"]);
}

/// The served versions of `forest` and the UNAVAILABLE ones with their reasons.
async fn index(
    client: &mut inferencehub_proto::pb::model_inference_client::ModelInferenceClient<
        tonic::transport::Channel,
    >,
) -> (Vec<(String, bool)>, Vec<(String, String)>) {
    let listed = common::models(client).await;
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

/// Where a polled repository lives, as the test changes it.
enum Repo {
    Local(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl Repo {
    /// Writes `bytes` at `path` under the repository (locally, written beside and renamed,
    /// as a deployment tool would).
    async fn put(&self, path: &str, bytes: Vec<u8>) {
        match self {
            Repo::Local(root) => {
                let target = root.join(path);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                let partial = root.join(".partial");
                std::fs::write(&partial, bytes).unwrap();
                std::fs::rename(partial, target).unwrap();
            }
            Repo::S3 { client, bucket } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("repo/{path}"))
                    .body(bytes.into())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Removes the folder (the prefix) `path`.
    async fn remove(&self, path: &str) {
        match self {
            Repo::Local(root) => std::fs::remove_dir_all(root.join(path)).unwrap(),
            Repo::S3 { client, bucket } => {
                let listed = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(format!("repo/{path}/"))
                    .send()
                    .await
                    .unwrap();
                for object in listed.contents() {
                    client
                        .delete_object()
                        .bucket(bucket)
                        .key(object.key().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    }
}

fn model_bytes(framework: &str) -> Vec<u8> {
    std::fs::read(fixture(framework).join("model.onnx")).unwrap()
}

/// Version 1 of `forest` (XGBoost) in `repo`; then, with traffic flowing that names no
/// version: version 2 (LightGBM) added takes over once loaded; a broken version 3 is listed
/// UNAVAILABLE with the loader's message while version 2 keeps serving; version 2 removed,
/// version 1 takes over again (the default policy serves the newest version that loads).
/// No request fails along the way, and every answer names its version.
async fn swap_versions_under_traffic(repo: &Repo, worker: &Worker) {
    let mut client = worker.client().await;
    assert_eq!(index(&mut client).await.0, [("1".to_string(), true)]);

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
                if ready == [(want.to_string(), true)] {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("version {want} never became the one served");
        }
    };

    repo.put("forest/2/model.onnx", model_bytes("lightgbm-binary"))
        .await;
    wait_for("2").await;
    repo.put("forest/3/model.onnx", b"not an onnx graph".to_vec())
        .await;
    let mut reason = String::new();
    for _ in 0..300 {
        let (ready, broken) = index(&mut client).await;
        if let Some((_, why)) = broken.iter().find(|(v, _)| v == "3") {
            reason = why.clone();
            assert_eq!(ready, [("2".to_string(), true)]);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reason.contains("ONNX"), "the loader's message: {reason:?}");
    repo.remove("forest/2").await;
    wait_for("1").await;
    // Version 3 is still listed broken.
    let (_, broken) = index(&mut client).await;
    assert!(broken.iter().any(|(v, _)| v == "3"), "{broken:?}");

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
    assert!(!seen.contains("3"), "{seen:?}");
}

/// `--model-control poll` over a local folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_repository_changes_under_traffic_without_a_failed_request() {
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::Local(root.path().to_path_buf());
    repo.put("forest/1/model.onnx", model_bytes("xgboost-binary"))
        .await;
    let worker = Worker::serving(
        root.path(),
        &["--model-control", "poll", "--poll-interval", "100ms"],
    )
    .await;
    swap_versions_under_traffic(&repo, &worker).await;
}

/// The same with the repository in S3 (a local moto server): the prefix is listed every
/// poll, and only changed objects are fetched. A key that would leave the mirror is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_repository_changes_under_traffic_without_a_failed_request() {
    let moto = inferencehub_devkit::secrets::Moto::start().await.unwrap();
    let client = moto.s3();
    client
        .create_bucket()
        .bucket("models")
        .send()
        .await
        .unwrap();
    let repo = Repo::S3 {
        client,
        bucket: "models".into(),
    };
    repo.put("forest/1/model.onnx", model_bytes("xgboost-binary"))
        .await;
    repo.put("../escape.onnx", b"outside".to_vec()).await;
    let worker = Worker::spawn_env(
        Path::new("s3://models/repo"),
        &["--model-control", "poll", "--poll-interval", "200ms"],
        &moto.env(),
    )
    .await;
    worker.wait_serving().await;
    swap_versions_under_traffic(&repo, &worker).await;
    assert!(
        worker.log().contains("not a path inside the repository"),
        "{}",
        worker.log()
    );
}

/// With `poll` a model that fails to load at start does not stop the worker: it is listed
/// UNAVAILABLE and the others serve. (With `none` it stops the worker: nothing would change.)
#[tokio::test]
async fn a_broken_model_at_start_is_listed_and_the_rest_serve() {
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::Local(root.path().to_path_buf());
    repo.put("forest/1/model.onnx", model_bytes("xgboost-binary"))
        .await;
    repo.put("broken/model.onnx", b"garbage".to_vec()).await;
    repo.put("badpolicy/1/model.onnx", model_bytes("xgboost-binary"))
        .await;
    repo.put("badpolicy/model.json", b"{\"version_policy\": 3}".to_vec())
        .await;
    let worker = Worker::serving(root.path(), &["--model-control", "poll"]).await;
    let mut client = worker.client().await;
    let listed = common::models(&mut client).await;
    let states: Vec<(&str, &str)> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("forest", ""),
            ("badpolicy", "UNAVAILABLE"),
            ("broken", "UNAVAILABLE")
        ],
        "{listed:?}"
    );
    assert!(listed[1].reason.contains("model.json"), "{:?}", listed[1]);

    let mut strict = Worker::spawn(root.path(), &[]).await;
    let log = strict.failed_log().await;
    assert!(log.contains("badpolicy") || log.contains("broken"), "{log}");
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
    let listed = common::models(&mut client).await;
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
    let listed = common::models(&mut client).await;
    assert_eq!(default_version(listed), Some("2".into()));
    let unknown = admin
        .load_model(LoadModelRequest {
            model_name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// `--memory-budget`: a version whose files would take the served total over the budget is
/// refused with the reason (listed UNAVAILABLE) and the served one stays; every served
/// version shows the bytes it holds, in ListModels and in the metrics.
#[tokio::test]
async fn a_version_over_the_memory_budget_is_refused_and_the_served_one_stays() {
    let root = tempfile::tempdir().unwrap();
    let repo = Repo::Local(root.path().to_path_buf());
    let (v1, v2) = (
        model_bytes("xgboost-binary"),
        model_bytes("lightgbm-binary"),
    );
    let (held, more) = (v1.len() as u64, v2.len() as u64);
    repo.put("forest/1/model.onnx", v1).await;
    // Room for version 1 and not for version 2 beside it.
    let budget = format!("--memory-budget={}", held + more - 1);
    let worker = Worker::serving(
        root.path(),
        &[
            "--model-control",
            "poll",
            "--poll-interval",
            "100ms",
            &budget,
        ],
    )
    .await;
    let mut client = worker.client().await;
    repo.put("forest/2/model.onnx", v2).await;
    let mut listed = Vec::new();
    for _ in 0..300 {
        listed = common::models(&mut client).await;
        if listed.iter().any(|m| m.state == "UNAVAILABLE") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = listed
        .iter()
        .find(|m| m.version == "2")
        .expect("version 2 listed");
    assert_eq!(refused.state, "UNAVAILABLE");
    assert!(
        refused.reason.contains("--memory-budget") && refused.reason.contains(&more.to_string()),
        "{}",
        refused.reason
    );
    let served = listed.iter().find(|m| m.version == "1").expect("version 1");
    assert!(served.state.is_empty() && served.default_version);
    assert_eq!(served.resident_bytes, held);
    assert_eq!(
        worker
            .metric("inferencehub_worker_model_resident_bytes{model=\"forest\",version=\"1\"}")
            .await,
        Some(held as f64)
    );
    let answered = client
        .predict(PredictRequest {
            model_name: "forest".into(),
            features: expected("xgboost-binary").inputs[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.model_version, "1");
    assert!(
        worker
            .metric(
                "inferencehub_worker_requests_total{code=\"OK\",model=\"forest\",version=\"1\"}"
            )
            .await
            >= Some(1.0)
    );
}
