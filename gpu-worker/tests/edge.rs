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

/// Idle TCP peers take handshake places only: past `--max-handshakes` the oldest pending
/// one is closed for the newest, the timeout closes the rest, and authenticated
/// connections have their own cap (`--max-connections`), enforced after the handshake.
#[tokio::test]
async fn the_handshake_budget_evicts_the_oldest_and_authenticated_connections_have_their_own_cap() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(
        dir.path(),
        &[
            "--tls-handshake-timeout",
            "3000ms",
            "--max-handshakes",
            "3",
            "--max-connections",
            "1",
        ],
    )
    .await;
    // The health probes' connections of `serving` go first.
    worker
        .gauge_reaches("inferencehub_worker_connections_open", 0.0)
        .await;

    // Three idle TCP connections: no TLS hello, nothing.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            TcpStream::connect(("127.0.0.1", worker.grpc_port))
                .await
                .unwrap(),
        );
    }
    worker
        .gauge_reaches("inferencehub_worker_connections_handshaking", 3.0)
        .await;

    // A fourth: the oldest pending handshake makes way, the newest stays.
    idle.push(
        TcpStream::connect(("127.0.0.1", worker.grpc_port))
            .await
            .unwrap(),
    );
    assert!(
        closed_by_peer(&mut idle[0], Duration::from_secs(2)).await,
        "the oldest pending handshake was left open"
    );
    worker
        .gauge_reaches("inferencehub_worker_connections_handshaking", 3.0)
        .await;
    assert_eq!(
        worker
            .metric("inferencehub_worker_connections_refused_total{reason=\"handshake_evicted\"}")
            .await,
        Some(1.0)
    );

    // The other three are closed by the handshake timeout.
    for stream in &mut idle[1..] {
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

    // One authenticated connection fits; a second is closed after its handshake.
    let first = worker.channel().await;
    assert_eq!(predict(first.clone()).await.unwrap(), "setosa");
    worker
        .gauge_reaches("inferencehub_worker_connections_open", 1.0)
        .await;
    let second = predict(worker.channel().await).await;
    assert!(second.is_err(), "a connection over the cap got {second:?}");
    assert!(
        worker
            .metric("inferencehub_worker_connections_refused_total{reason=\"connection_cap\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(predict(first).await.unwrap(), "setosa");
}

/// The probe from the security review: 1,100 idle TCP connections (more than the old
/// shared cap of 1,024) while a real mTLS client calls. With the default budgets the idle
/// peers age out of the handshake places and the client gets in.
#[tokio::test]
async fn a_thousand_idle_peers_cannot_lock_a_real_client_out() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let mut idle = Vec::with_capacity(1_100);
    for _ in 0..1_100 {
        idle.push(
            TcpStream::connect(("127.0.0.1", worker.grpc_port))
                .await
                .unwrap(),
        );
    }
    worker
        .metric_settles(
            "inferencehub_worker_connections_handshaking",
            Duration::from_secs(20),
            |places| places >= 256.0,
        )
        .await
        .unwrap_or_else(|last| {
            panic!("the idle peers never filled the handshake places ({last:?})")
        });
    // A new client, and its calls, while the 1,100 sockets are still open.
    let label = tokio::time::timeout(Duration::from_secs(10), async {
        predict(worker.channel().await).await
    })
    .await
    .expect("the client is not locked out")
    .unwrap();
    assert_eq!(label, "setosa");
    // Every peer past the 256 places was evicted for a newer one; the counter is bumped by
    // the evicted connections' tasks, which can finish after the client's call.
    worker
        .metric_settles(
            "inferencehub_worker_connections_refused_total{reason=\"handshake_evicted\"}",
            Duration::from_secs(10),
            |evicted| evicted >= 1_100.0 - 256.0,
        )
        .await
        .unwrap_or_else(|last| panic!("evicted {last:?}, want at least {}", 1_100 - 256));
    drop(idle);
}

/// A revoked client certificate: once the revocation list names it and the worker re-reads
/// it (SIGHUP), new handshakes with it fail, and the connection it already holds ends at
/// `--max-connection-age`; its reconnection is refused. Other clients keep working.
#[tokio::test]
async fn a_revoked_certificate_loses_its_connections_within_the_maximum_age() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &["--max-connection-age", "2s"]).await;
    let cert = worker.dir.path().join("revoked.pem");
    let key = worker.dir.path().join("revoked.key");
    let serial = worker
        .ca
        .issue_client(GATEWAY_CLIENT_NAME, None, &cert, &key)
        .unwrap();
    let held = worker
        .channel_with(&worker.certs.ca, Some((cert.as_path(), key.as_path())))
        .await;
    assert_eq!(predict(held.clone()).await.unwrap(), "setosa");

    worker.revoke(&[serial]);
    // New handshakes with it fail once the list is re-read.
    let mut refused = false;
    for _ in 0..100 {
        let fresh = worker
            .channel_with(&worker.certs.ca, Some((cert.as_path(), key.as_path())))
            .await;
        if predict(fresh).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a revoked certificate still got in:\n{}",
        worker.log()
    );
    // The connection it held is closed at its maximum age, and the reconnection fails.
    let mut cut_off = false;
    for _ in 0..100 {
        if predict(held.clone()).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut_off, "the revoked certificate's connection kept working");
    // The gateway's own certificate is not revoked.
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
    let (new, new_ca) = certs::generate_with_ca(rotated.path()).unwrap();
    copy(&new.server_cert, &worker.certs.server_cert);
    copy(&new.server_key, &worker.certs.server_key);
    copy(&new.ca, &worker.certs.ca);
    // The revocation list rotates with its CA (one from another CA would leave every new
    // client's status unknown, which is refused).
    new_ca
        .write_crl(&[], &worker.certs.ca.with_file_name("crl.pem"))
        .unwrap();
    worker.sighup();

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
    worker.sighup();
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

/// The first HTTP/2 SETTINGS the worker sends an authenticated client, as (id, value).
async fn server_settings(worker: &Worker) -> Vec<(u16, u32)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncWriteExt;

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&worker.certs.ca).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&worker.certs.client_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&worker.certs.client_key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", worker.grpc_port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // The client preface and an empty SETTINGS frame; the server's first frame is its
    // SETTINGS (RFC 9113 §3.4).
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

/// One connection may hold at most `--max-concurrent-streams` calls at once: the worker
/// says so in its HTTP/2 SETTINGS (SETTINGS_MAX_CONCURRENT_STREAMS, id 3), which clients
/// must respect.
#[tokio::test]
async fn the_worker_bounds_concurrent_streams_per_connection() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &["--max-concurrent-streams", "17"]).await;
    let settings = server_settings(&worker).await;
    assert!(settings.contains(&(3, 17)), "{settings:?}");
    // The default is set too (h2 would otherwise advertise no limit).
    let worker = Worker::serving(dir.path(), &[]).await;
    let settings = server_settings(&worker).await;
    assert!(settings.contains(&(3, 256)), "{settings:?}");
}
