//! The worker client's TLS material from Secrets Manager (a local moto server), as the
//! deployed functions read it at cold start, and the health function's own identity: the
//! worker lets it check health and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start_worker, worker_config};
use inferencehub_devkit::certs::{self, CertPaths};
use inferencehub_devkit::secrets::Moto;
use inferencehub_functions::secrets::{fetch_client_pems, worker_client_pems};
use inferencehub_functions::worker::{GrpcWorker, Worker};
use inferencehub_proto::pb::{FeatureRow, PredictBatchRequest};
use inferencehub_proto::settings::WorkerClientTls;
use tonic::Code;

fn secret_json(certs: &CertPaths, cert: &std::path::Path, key: &std::path::Path) -> String {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    serde_json::json!({
        "ca": read(&certs.ca),
        "client_cert": read(cert),
        "client_key": read(key),
    })
    .to_string()
}

/// One iris row, as the gateway sends every request: a batch.
fn iris() -> PredictBatchRequest {
    PredictBatchRequest {
        rows: vec![FeatureRow {
            features: vec![5.1, 3.5, 1.4, 0.2],
        }],
        model_name: "iris".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_client_key_comes_from_secrets_manager_and_the_health_identity_only_checks_health() {
    inferencehub_functions::crypto::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::generate(&dir.path().join("certs")).unwrap();
    let worker = start_worker(&certs, None).await;
    let addr = format!("https://127.0.0.1:{}", worker.grpc_addr.port());
    let moto = Moto::start().await.unwrap();
    let sm = moto.client();

    let predict_arn = moto
        .create_secret(
            "inferencehub/worker-client",
            &secret_json(&certs, &certs.client_cert, &certs.client_key),
        )
        .await
        .unwrap();
    let health_arn = moto
        .create_secret(
            "inferencehub/worker-health",
            &secret_json(&certs, &certs.health_cert, &certs.health_key),
        )
        .await
        .unwrap();

    // No PEM in the settings, only the secret's id.
    let no_files = WorkerClientTls {
        ca: None,
        cert: None,
        key: None,
        server_name: "localhost".into(),
    };
    let config = |arn: &str| inferencehub_functions::config::WorkerConfig {
        tls: no_files.clone(),
        tls_secret_id: Some(arn.to_string()),
        ..worker_config(&addr, &certs)
    };

    // The predict and models functions' identity: predictions.
    let pems = fetch_client_pems(&sm, &predict_arn).await.unwrap();
    let gateway = GrpcWorker::connect_with(config(&predict_arn), pems)
        .await
        .unwrap();
    let answer = gateway.predict_batch(iris(), "req-1").await.unwrap();
    assert_eq!(answer.results[0].label, "setosa");
    assert!(gateway.serving().await.unwrap());

    // The health function's identity: health yes, predictions refused by the worker.
    let pems = fetch_client_pems(&sm, &health_arn).await.unwrap();
    let health = GrpcWorker::connect_with(config(&health_arn), pems)
        .await
        .unwrap();
    assert!(health.serving().await.unwrap());
    let refused = health.predict_batch(iris(), "req-2").await.unwrap_err();
    assert_eq!(refused.code, Code::PermissionDenied, "{refused}");

    // A secret that is not the expected JSON, or one that does not exist, fails the cold
    // start with a message naming the secret, never its value.
    let bad = moto
        .create_secret("inferencehub/bad", r#"{"ca":"x","client_cert":"y"}"#)
        .await
        .unwrap();
    let err = fetch_client_pems(&sm, &bad).await.err().unwrap();
    assert!(format!("{err:#}").contains("client_key"), "{err:#}");
    let err = fetch_client_pems(&sm, "inferencehub/missing")
        .await
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("inferencehub/missing"),
        "{err:#}"
    );

    // Setting both the secret and the PEM values is refused before any call.
    let both = inferencehub_functions::config::WorkerConfig {
        tls_secret_id: Some(predict_arn.clone()),
        ..worker_config(&addr, &certs)
    };
    let err = worker_client_pems(&both).await.err().unwrap();
    assert!(err.to_string().contains("not both"), "{err}");
}
