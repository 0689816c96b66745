//! The load generator against a real worker over mutual TLS: every call answered, the
//! batch sizes read back from the answers, and the summary's counts.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use inferencehub_bench::load::{Grpc, Input, Target, closed_loop, connect};
use inferencehub_devkit::certs;
use inferencehub_proto::settings::WorkerClientTls;
use inferencehub_worker::config::ServeArgs;
use inferencehub_worker::server;

#[tokio::test]
async fn grpc_load_is_answered_and_reports_batch_sizes() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    assert!(models.join("iris").is_dir(), "run `make models` first");
    let only = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        models.join("iris").canonicalize().unwrap(),
        only.path().join("iris"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::generate(dir.path()).unwrap();
    let flags: Vec<std::ffi::OsString> = [
        ("--listen", Path::new("127.0.0.1:0")),
        ("--metrics-listen", Path::new("127.0.0.1:0")),
        ("--model-dir", only.path()),
        ("--tls-cert", &certs.server_cert),
        ("--tls-key", &certs.server_key),
        ("--tls-client-ca", &certs.ca),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.into(), value.as_os_str().to_owned()])
    .collect();
    let mut worker = server::start(ServeArgs::from_flags(flags).unwrap())
        .await
        .unwrap();
    worker.ready().await.unwrap();
    let tls = WorkerClientTls::from_files(&certs.ca, &certs.client_cert, &certs.client_key);
    let channel = connect(
        &format!("https://{}", worker.grpc_addr),
        &tls,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let target = Arc::new(Grpc::new(vec![channel], Duration::from_secs(10)));
    let rows = vec![
        Input::Features(vec![5.1, 3.5, 1.4, 0.2]),
        Input::Features(vec![6.3, 3.3, 6.0, 2.5]),
    ];
    let summary = closed_loop(target.clone(), "iris", rows, 8, 64).await;
    assert_eq!((summary.sent, summary.ok, summary.failed), (64, 64, 0));
    let mean = summary.mean_batch.expect("the worker says its batch sizes");
    assert!((1.0..=8.0).contains(&mean), "{mean}");
    // A refusal comes back as the status the gateway would answer.
    let refused = target.send("iris", &Input::Features(vec![1.0])).await;
    assert_eq!(refused.status, 400);
    let missing = target.send("nope", &Input::Text("x".into())).await;
    assert_eq!(missing.status, 404);
    worker.stop().await.unwrap();
}
