//! The gateway's worker client against replicas that die, freeze or come back, and
//! against connections a load balancer dropped while the Lambda was frozen. Real workers
//! over mutual TLS; the faults come from a loopback proxy in front of one of them (what
//! SIGKILL and SIGSTOP look like from the network: reset connections; TCP open with no
//! answers). `scripts/chaos.sh` does the same to real processes through the whole stack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{answered, start_worker, worker_config};
use inferencehub_devkit::certs;
use inferencehub_devkit::proxy::{Mode, Proxy};
use inferencehub_functions::config::WorkerConfig;
use inferencehub_functions::worker::{GrpcWorker, Worker};
use inferencehub_proto::pb::{FeatureRow, PredictBatchRequest};
use inferencehub_worker::server::RunningWorker;

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

/// `n` predictions, `concurrency` at a time: how many failed.
async fn load(client: &GrpcWorker, n: usize, concurrency: usize) -> usize {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move { client.predict_batch(iris(), &format!("req-{i}")).await }
        })
        .buffer_unordered(concurrency)
        .filter_map(|r| std::future::ready(r.err()))
        .inspect(|e| eprintln!("failed: {e}"))
        .count()
        .await
}

/// Sends light load until `worker` answers some of it (bounded): true when it did.
async fn gets_traffic_back(client: &GrpcWorker, worker: &RunningWorker) -> bool {
    let before = answered(worker).await;
    let started = Instant::now();
    while answered(worker).await == before && started.elapsed() < Duration::from_secs(60) {
        assert_eq!(load(client, 20, 2).await, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    answered(worker).await > before
}

struct Pair {
    a: RunningWorker,
    b: RunningWorker,
    proxy: Proxy,
    client: GrpcWorker,
    _dir: tempfile::TempDir,
}

/// Two workers, the first behind the fault proxy, and a client over both.
async fn pair(tune: impl FnOnce(&mut WorkerConfig)) -> Pair {
    inferencehub_functions::crypto::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::generate(&dir.path().join("certs")).unwrap();
    let a = start_worker(&certs, None).await;
    let b = start_worker(&certs, None).await;
    let proxy = Proxy::start(a.grpc_addr).await.unwrap();
    let mut config = worker_config(&proxy.url(), &certs);
    config
        .addrs
        .push(format!("https://127.0.0.1:{}", b.grpc_addr.port()));
    config.timeout = Duration::from_secs(5);
    config.attempt_timeout = Duration::from_millis(500);
    tune(&mut config);
    let client = GrpcWorker::connect(config).await.unwrap();
    Pair {
        a,
        b,
        proxy,
        client,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_killed_replica_costs_no_request_and_is_used_again_when_back() {
    let p = pair(|_| {}).await;
    assert_eq!(load(&p.client, 40, 4).await, 0);
    assert!(answered(&p.a).await >= 10.0, "round robin reaches both");

    p.proxy.set(Mode::Dead);
    let before_b = answered(&p.b).await;
    assert_eq!(load(&p.client, 200, 8).await, 0, "no request may fail");
    assert_eq!(
        answered(&p.b).await - before_b,
        200.0,
        "the survivor answered all"
    );

    // Back: after its ejection ends it gets calls again, without a new client.
    p.proxy.set(Mode::Forward);
    assert!(
        gets_traffic_back(&p.client, &p.a).await,
        "the replica never got traffic back"
    );
}

#[tokio::test]
async fn a_frozen_replica_is_skipped_and_no_request_fails() {
    let p = pair(|_| {}).await;
    assert_eq!(load(&p.client, 20, 2).await, 0);

    p.proxy.set(Mode::Frozen);
    // A call that lands on the frozen one waits one attempt timeout, then goes to the
    // other; a timeout ejects it at once, so calls one at a time pay that only once.
    assert_eq!(load(&p.client, 10, 1).await, 0, "no request may fail");
    assert_eq!(
        p.client.failovers(),
        1,
        "one timed-out attempt must eject it"
    );
    assert_eq!(load(&p.client, 200, 8).await, 0, "no request may fail");
    assert!(p.client.failovers() >= 1, "nothing failed over");
    // Ejected: later calls go straight to the other one; its health probes (not live
    // calls) keep failing, so it stays out.
    let failovers = p.client.failovers();
    for _ in 0..3 {
        assert_eq!(load(&p.client, 100, 8).await, 0);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(
        p.client.failovers(),
        failovers,
        "live calls still reached the frozen one"
    );

    // Thawed: a probe brings it back and it answers live calls again.
    p.proxy.set(Mode::Forward);
    assert!(
        gets_traffic_back(&p.client, &p.a).await,
        "the thawed replica never got traffic back"
    );
}

#[tokio::test]
async fn every_replica_down_fails_within_the_deadline_then_recovers() {
    let p = pair(|c| c.timeout = Duration::from_secs(2)).await;
    p.proxy.set(Mode::Dead);
    p.b.stop().await.unwrap();
    let started = Instant::now();
    let err = p.client.predict_batch(iris(), "r").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "{err}");
    assert_eq!(err.code, tonic::Code::Unavailable, "{err}");

    // One replica back: the same client recovers.
    p.proxy.set(Mode::Forward);
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < Duration::from_secs(60) {
        if p.client.predict_batch(iris(), "r").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "never recovered");
}

#[tokio::test]
async fn connections_idle_past_the_rebuild_time_are_rebuilt_after_a_freeze() {
    inferencehub_functions::crypto::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs::generate(&dir.path().join("certs")).unwrap();
    let worker = start_worker(&certs, None).await;
    let proxy = Proxy::start(worker.grpc_addr).await.unwrap();
    let client_with = |idle: Duration| {
        let mut config = worker_config(&proxy.url(), &certs);
        config.timeout = Duration::from_secs(3);
        // No second attempt fits: only the rebuild can save the call.
        config.attempt_timeout = config.timeout;
        config.idle_rebuild = idle;
        GrpcWorker::connect(config)
    };
    let rebuilding = client_with(Duration::from_millis(500)).await.unwrap();
    let keeping = client_with(Duration::from_secs(600)).await.unwrap();
    rebuilding.predict_batch(iris(), "r").await.unwrap();
    keeping.predict_batch(iris(), "r").await.unwrap();

    // The Lambda is frozen; meanwhile the load balancer forgets its connections.
    proxy.set(Mode::DropExisting);
    tokio::time::sleep(Duration::from_millis(800)).await;

    let answer = rebuilding.predict_batch(iris(), "r").await;
    assert_eq!(answer.unwrap().results[0].label, "setosa");
    // Without the rebuild the call waits on the dead connection until its deadline.
    let stuck = keeping.predict_batch(iris(), "r").await;
    assert!(stuck.is_err(), "a dropped connection answered: {stuck:?}");
}
