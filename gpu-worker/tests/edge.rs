//! The worker's network edge, against the real binary: which client certificates get in,
//! what happens to connections that never finish a handshake, the connection cap, and a
//! certificate rotation on SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Worker, model_subset};
use inferencehub_devkit::certs::{self, GATEWAY_CLIENT_NAME, HEALTH_CLIENT_NAME};
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{FeatureRow, ListModelsRequest, PredictBatchRequest, PredictRequest};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn iris() -> PredictRequest {
    PredictRequest {
        features: vec![5.1, 3.5, 1.4, 0.2],
        model_name: "iris".into(),
        ..Default::default()
    }
}

async fn predict(channel: Channel) -> Result<String, tonic::Status> {
    ModelInferenceClient::new(channel)
        .predict(iris())
        .await
        .map(|r| r.into_inner().label)
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// Waits (bounded) until the peer closes `stream`: true when it did.
async fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test]
async fn only_named_unexpired_certificates_get_in_and_health_names_only_check_health() {
    let dir = model_subset(&["iris"]);
    let names = format!("--tls-client-names={GATEWAY_CLIENT_NAME}");
    let health_names = format!("--tls-health-names={HEALTH_CLIENT_NAME}");
    let worker = Worker::serving(dir.path(), &[&names, &health_names]).await;
    let certs_dir = worker.dir.path().join("more");
    std::fs::create_dir_all(&certs_dir).unwrap();
    let issue = |stem: &str, name: &str, validity: certs::Validity| {
        let cert = certs_dir.join(format!("{stem}.pem"));
        let key = certs_dir.join(format!("{stem}.key"));
        worker.ca.issue_client(name, validity, &cert, &key).unwrap();
        (cert, key)
    };
    let w = &worker;
    let with = move |pair: &(std::path::PathBuf, std::path::PathBuf)| {
        let pair = pair.clone();
        async move {
            w.channel_with(&w.certs.ca, Some((pair.0.as_path(), pair.1.as_path())))
                .await
        }
    };

    // The gateway's certificate: everything.
    assert_eq!(predict(worker.channel().await).await.unwrap(), "setosa");

    // Same CA, right name, expired last year: the handshake fails.
    let expired = issue("expired", GATEWAY_CLIENT_NAME, certs::expired());
    let refused = predict(with(&expired).await).await;
    assert!(refused.is_err(), "an expired certificate got {refused:?}");

    // Same CA, valid, but for a name the worker does not allow.
    let stranger = issue("stranger", "someone-else", None);
    let refused = predict(with(&stranger).await).await;
    assert!(
        refused.is_err(),
        "a wrongly named certificate got {refused:?}"
    );
    let refused = health(with(&stranger).await).await;
    assert!(
        refused.is_err(),
        "a wrongly named certificate got {refused:?}"
    );

    // A plaintext client on the TLS port.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", worker.grpc_port))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let refused = predict(plain).await;
    assert!(refused.is_err(), "a plaintext client got {refused:?}");

    // The health function's certificate: health yes, predictions no.
    let health_pair = (
        worker.certs.health_cert.clone(),
        worker.certs.health_key.clone(),
    );
    let checker = with(&health_pair).await;
    assert_eq!(health(checker.clone()).await.unwrap(), 1, "SERVING");
    let denied = predict(checker).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // And the gateway still gets answers afterwards.
    assert_eq!(predict(worker.channel().await).await.unwrap(), "setosa");
    let failed = worker
        .metric("inferencehub_worker_connections_refused_total{reason=\"handshake_failed\"}")
        .await
        .unwrap_or(0.0);
    assert!(failed >= 3.0, "handshake failures counted: {failed}");
}

/// The gateway's models function holds a certificate of its own, named in
/// `--tls-catalog-names`: it may list the catalogue (and check health) and nothing else, so
/// its key cannot be used to predict; the predict function's certificate may do both.
#[tokio::test]
async fn catalog_names_may_list_models_and_not_predict() {
    let dir = model_subset(&["iris"]);
    let names = format!("--tls-client-names={GATEWAY_CLIENT_NAME}");
    let catalog_names = "--tls-catalog-names=inferencehub-models";
    let worker = Worker::serving(dir.path(), &[&names, catalog_names]).await;
    let cert = worker.dir.path().join("models.pem");
    let key = worker.dir.path().join("models.key");
    worker
        .ca
        .issue_client("inferencehub-models", None, &cert, &key)
        .unwrap();
    let models = worker
        .channel_with(&worker.certs.ca, Some((cert.as_path(), key.as_path())))
        .await;

    let listed = ModelInferenceClient::new(models.clone())
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.models.iter().any(|m| m.name == "iris"));
    assert_eq!(health(models.clone()).await.unwrap(), 1, "SERVING");
    let denied = predict(models.clone()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("ListModels"), "{denied:?}");
    let denied = ModelInferenceClient::new(models)
        .predict_batch(PredictBatchRequest {
            model_name: "iris".into(),
            rows: vec![FeatureRow {
                features: vec![5.1, 3.5, 1.4, 0.2],
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // The predict function's certificate: both.
    assert_eq!(predict(worker.channel().await).await.unwrap(), "setosa");
    let listed = ModelInferenceClient::new(worker.channel().await)
        .list_models(ListModelsRequest::default())
        .await
        .unwrap();
    assert!(!listed.into_inner().models.is_empty());
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_connection_cap_holds() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(
        dir.path(),
        &[
            "--tls-handshake-timeout",
            "3000ms",
            "--max-connections",
            "3",
        ],
    )
    .await;
    let open = || async {
        worker
            .metric("inferencehub_worker_connections_open")
            .await
            .unwrap_or(-1.0)
    };
    // Wait until the health probes' connections of `serving` are gone.
    let settle = async {
        while open().await != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settle)
        .await
        .expect("no connection left open");

    // Three idle TCP connections: no TLS hello, nothing.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            TcpStream::connect(("127.0.0.1", worker.grpc_port))
                .await
                .unwrap(),
        );
    }
    let filled = async {
        while open().await != 3.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), filled)
        .await
        .expect("the three idle connections hold their slots");

    // A fourth is over the cap: closed at once, while the three are still open.
    let mut over = TcpStream::connect(("127.0.0.1", worker.grpc_port))
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut over, Duration::from_secs(10)).await,
        "the connection over the cap was left open"
    );
    assert_eq!(open().await, 3.0, "the idle connections keep their slots");

    // The three are closed by the handshake timeout.
    for stream in &mut idle {
        assert!(
            closed_by_peer(stream, Duration::from_secs(20)).await,
            "an idle connection stayed open past the handshake timeout"
        );
    }
    assert_eq!(
        worker
            .metric("inferencehub_worker_connections_refused_total{reason=\"handshake_timeout\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        worker
            .metric("inferencehub_worker_connections_refused_total{reason=\"connection_cap\"}")
            .await,
        Some(1.0)
    );
    // Their slots are free again: a real client gets in.
    assert_eq!(predict(worker.channel().await).await.unwrap(), "setosa");
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_certificates_without_dropping_established_connections() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let before = worker.channel().await;
    assert_eq!(predict(before.clone()).await.unwrap(), "setosa");

    // A new CA, server and client certificates, written over the worker's files.
    let rotated = tempfile::tempdir().unwrap();
    let new = certs::generate(rotated.path()).unwrap();
    copy(&new.server_cert, &worker.certs.server_cert);
    copy(&new.server_key, &worker.certs.server_key);
    copy(&new.ca, &worker.certs.ca);
    let pid = worker.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());

    // New clients with the new material get in (once the signal is handled).
    let fresh = || worker.channel_with(&new.ca, Some((&new.client_cert, &new.client_key)));
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(label) = predict(fresh().await).await {
            answered = Some(label);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered.as_deref(),
        Some("setosa"),
        "log:\n{}",
        worker.log()
    );
    assert!(
        worker
            .log()
            .contains("TLS certificate, key and client CA reloaded")
    );

    // The connection made before the rotation still works: old certificates on both
    // sides, so it can only be the same connection.
    for _ in 0..5 {
        assert_eq!(predict(before.clone()).await.unwrap(), "setosa");
    }
    // A new connection with the old client certificate does not.
    let refused = predict(
        worker
            .channel_with(
                &new.ca,
                Some((&worker.certs.client_cert, &worker.certs.client_key)),
            )
            .await,
    )
    .await;
    assert!(
        refused.is_err(),
        "a client of the retired CA got {refused:?}"
    );

    // A broken file on the next SIGHUP keeps the working certificates.
    std::fs::write(&worker.certs.server_key, "not a key").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    let mut logged = false;
    for _ in 0..100 {
        if worker.log().contains("TLS reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "log:\n{}", worker.log());
    assert_eq!(predict(fresh().await).await.unwrap(), "setosa");
}
