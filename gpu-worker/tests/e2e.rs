//! End to end: the real worker binary, the demo models, mutual TLS with certificates made
//! by the test, real gRPC clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Worker, demo_models, model_subset};
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{
    FeatureRow, ModelKind, ModelTask, PredictBatchRequest, PredictRequest, PredictResponse,
};
use tonic::Code;
use tonic::transport::Channel;

fn text(model: &str, prompt: &str) -> PredictRequest {
    PredictRequest {
        model_name: model.into(),
        prompt: prompt.into(),
        ..Default::default()
    }
}

fn tabular(model: &str, features: &[f32]) -> PredictRequest {
    PredictRequest {
        model_name: model.into(),
        features: features.to_vec(),
        ..Default::default()
    }
}

async fn predict(
    client: &mut ModelInferenceClient<Channel>,
    req: PredictRequest,
) -> PredictResponse {
    client.predict(req).await.expect("prediction").into_inner()
}

fn assert_distribution(r: &PredictResponse, labels: &[&str]) {
    let names: Vec<&str> = r.scores.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(names, labels);
    let sum: f32 = r.scores.iter().map(|s| s.probability).sum();
    assert!((sum - 1.0).abs() < 1e-4, "scores sum to {sum}");
    let best = r.scores.iter().find(|s| s.label == r.label).unwrap();
    assert_eq!(best.probability, r.probability);
    assert!(r.scores.iter().all(|s| s.probability <= r.probability));
}

#[tokio::test]
async fn predicts_sentiment_and_iris_over_mutual_tls() {
    let worker = Worker::serving(&demo_models(), &["--max-wait", "1ms"]).await;
    let mut client = worker.client().await;

    for prompt in [
        "I absolutely loved it, this is wonderful and works perfectly!",
        "Thank you, the support team was fantastic and fixed everything.",
        "What a great day, I'm so happy.",
    ] {
        let r = predict(&mut client, text("sentiment", prompt)).await;
        assert_eq!(r.label, "positive", "{prompt}: {r:?}");
        assert!(r.probability > 0.5);
        assert_distribution(&r, &["negative", "positive"]);
    }
    for prompt in [
        "This is terrible, it broke after one day and I want a refund.",
        "The service was awful and the staff were rude.",
        "I hate this, worst experience ever.",
    ] {
        let r = predict(&mut client, text("sentiment", prompt)).await;
        assert_eq!(r.label, "negative", "{prompt}: {r:?}");
        assert_distribution(&r, &["negative", "positive"]);
    }

    for (row, species) in [
        ([5.1, 3.5, 1.4, 0.2], "setosa"),
        ([7.0, 3.2, 4.7, 1.4], "versicolor"),
        ([6.3, 3.3, 6.0, 2.5], "virginica"),
        ([4.9, 3.0, 1.4, 0.2], "setosa"),
        ([6.4, 3.2, 4.5, 1.5], "versicolor"),
        ([7.7, 3.8, 6.7, 2.2], "virginica"),
    ] {
        let r = predict(&mut client, tabular("iris", &row)).await;
        assert_eq!(r.label, species, "{row:?}: {r:?}");
        assert_distribution(&r, &["setosa", "versicolor", "virginica"]);
    }

    let mut req = text("sentiment", "fine");
    req.request_id = "req-42".into();
    let response = client.predict(req).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap(),
        "req-42"
    );
    let r = response.into_inner();
    assert_eq!(r.request_id, "req-42");
    assert_eq!(r.model_name, "sentiment");
    assert_eq!(r.model_version.len(), 12);
    assert!(r.latency_ms > 0.0 && r.latency_ms >= r.compute_ms);
    assert!(r.batch_size >= 1);

    // The metrics endpoint counts what just happened.
    let ok = worker
        .metric("inferencehub_worker_requests_total{code=\"OK\",model=\"iris\"}")
        .await;
    assert_eq!(ok, Some(6.0));
}

#[tokio::test]
async fn lists_the_demo_models_with_their_signatures() {
    let worker = Worker::serving(&demo_models(), &[]).await;
    let models = common::models(&mut worker.client().await).await;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["columns", "digits", "iris", "minilm", "sentiment", "wine"]
    );
    let by_name = |name: &str| models.iter().find(|m| m.name == name).unwrap();
    let columns = by_name("columns");
    let inputs: Vec<(&str, &str)> = columns
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str()))
        .collect();
    assert_eq!(
        inputs,
        [("age", "FP32"), ("income", "FP32"), ("city", "BYTES")]
    );
    let digits = by_name("digits");
    assert_eq!(digits.kind(), ModelKind::Tabular);
    assert_eq!(digits.feature_count, 64);
    assert_eq!(digits.input.as_ref().unwrap().shape, [-1, 1, 8, 8]);
    assert_eq!(digits.labels.len(), 10);
    let iris = by_name("iris");
    assert_eq!(iris.kind(), ModelKind::Tabular);
    assert_eq!(iris.feature_count, 4);
    assert_eq!(iris.labels, ["setosa", "versicolor", "virginica"]);
    let minilm = by_name("minilm");
    assert_eq!(minilm.task(), ModelTask::Embedding);
    assert_eq!(minilm.value_count, 384);
    assert_eq!(minilm.max_tokens, 256);
    let sentiment = by_name("sentiment");
    assert_eq!(sentiment.kind(), ModelKind::Text);
    assert_eq!(sentiment.labels, ["negative", "positive"]);
    assert_eq!(sentiment.max_tokens, 256);
    assert!(sentiment.max_prompt_bytes > 0);
    assert_ne!(iris.version, sentiment.version);
    let wine = by_name("wine");
    assert_eq!(wine.kind(), ModelKind::Tabular);
    assert_eq!(wine.task(), ModelTask::Classification);
    assert_eq!(wine.feature_count, 13);
    assert_eq!(wine.feature_names.len(), 13);
    assert_eq!(wine.labels, ["cultivar_1", "cultivar_2", "cultivar_3"]);
    let input = wine.input.as_ref().unwrap();
    assert_eq!(
        (input.name.as_str(), input.datatype.as_str()),
        ("X", "FP32")
    );
    assert_eq!(input.shape, [-1, 13]);
}

#[tokio::test]
async fn refuses_clients_without_a_trusted_certificate() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let request = || tabular("iris", &[5.1, 3.5, 1.4, 0.2]);

    // No client certificate at all.
    let anonymous = worker.channel_with(&worker.certs.ca, None).await;
    let refused = ModelInferenceClient::new(anonymous)
        .predict(request())
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );

    // A certificate from a CA the worker does not trust.
    let other = tempfile::tempdir().unwrap();
    let other = inferencehub_devkit::certs::generate(other.path()).unwrap();
    let stranger = worker
        .channel_with(
            &worker.certs.ca,
            Some((&other.client_cert, &other.client_key)),
        )
        .await;
    let refused = ModelInferenceClient::new(stranger).predict(request()).await;
    assert!(refused.is_err(), "a client of another CA got {refused:?}");

    // The proper client still gets answers.
    let mut client = worker.client().await;
    assert_eq!(predict(&mut client, request()).await.label, "setosa");
}

/// The fields a status names in its `google.rpc.BadRequest` details.
fn fields(status: &tonic::Status) -> Vec<String> {
    inferencehub_proto::field_errors(status)
        .into_iter()
        .map(|e| e.field)
        .collect()
}

#[tokio::test]
async fn hostile_inputs_get_invalid_argument_naming_the_field() {
    let worker = Worker::serving(&demo_models(), &["--max-prompt-bytes", "4000"]).await;
    let mut client = worker.client().await;
    let cases = [
        (tabular("iris", &[1.0, 2.0, 3.0]), "features"),
        (tabular("iris", &[1.0, 2.0, 3.0, 4.0, 5.0]), "features"),
        (tabular("iris", &[]), "features"),
        (tabular("iris", &[1.0, f32::NAN, 3.0, 4.0]), "features[1]"),
        (
            tabular("iris", &[1.0, 2.0, f32::INFINITY, 4.0]),
            "features[2]",
        ),
        (
            tabular("iris", &[f32::NEG_INFINITY, 2.0, 3.0, 4.0]),
            "features[0]",
        ),
        (text("sentiment", ""), "prompt"),
        (text("sentiment", "   "), "prompt"),
        (text("sentiment", &"long ".repeat(1000)), "prompt"),
        (tabular("sentiment", &[1.0, 2.0]), "features"),
        (text("iris", "what species is this?"), "prompt"),
        (text("", "hello"), "model_name"),
    ];
    for (req, field) in cases {
        let status = client
            .predict(req.clone())
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}: {status:?}");
        // The field travels as google.rpc.BadRequest in the status details.
        assert_eq!(fields(&status), [field], "{req:?}: {status:?}");
    }

    let status = client.predict(text("nope", "hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"));

    // Batch form: the offending element is named.
    let status = client
        .predict_batch(PredictBatchRequest {
            model_name: "iris".into(),
            rows: vec![
                FeatureRow {
                    features: vec![1.0, 2.0, 3.0, 4.0],
                },
                FeatureRow {
                    features: vec![1.0, 2.0, f32::NAN, 4.0],
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["rows[1].features[2]"], "{status:?}");
    let status = client
        .predict_batch(PredictBatchRequest {
            model_name: "sentiment".into(),
            prompts: vec!["good".into(), String::new()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&status), ["prompts[1]"], "{status:?}");

    // A prompt far beyond the token limit is truncated, not refused: whatever follows the
    // 256th token cannot change the answer.
    let long = "The staff were kind and the room was lovely. ".repeat(40);
    let a = predict(&mut client, text("sentiment", &long)).await;
    let b = predict(
        &mut client,
        text("sentiment", &format!("{long} awful, terrible, broken")),
    )
    .await;
    assert_eq!(a.scores, b.scores);
    assert_eq!(
        worker.health().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn concurrent_requests_share_forward_passes_with_identical_results() {
    let worker = Worker::serving(
        &demo_models(),
        &["--max-batch-size", "8", "--max-wait", "2000ms"],
    )
    .await;
    let prompts = [
        "Great product, I love it.",
        "Terrible, it broke immediately.",
        "The delivery was fast and the packaging was neat.",
        "Not what I expected, quite disappointing overall.",
        "ok",
        "The staff were friendly but the room was cold, and honestly I would not come back again.",
        "Superb!",
        "I'm not sure how I feel about this one.",
    ];
    let client = worker.client().await;

    // All eight at once: the batch fills and runs as one forward pass.
    let together = futures::future::join_all(prompts.iter().map(|p| {
        let mut c = client.clone();
        let req = text("sentiment", p);
        async move { c.predict(req).await.unwrap().into_inner() }
    }))
    .await;
    assert!(together.iter().all(|r| r.batch_size == 8), "{together:?}");

    // The same inputs one at a time, on a worker that never batches.
    let single = Worker::serving(&demo_models(), &["--max-batch-size", "1"]).await;
    let mut alone = single.client().await;
    for (prompt, batched) in prompts.iter().zip(&together) {
        let r = predict(&mut alone, text("sentiment", prompt)).await;
        assert_eq!(r.batch_size, 1);
        assert_eq!(r.label, batched.label, "{prompt}");
        for (a, b) in r.scores.iter().zip(&batched.scores) {
            assert!(
                (a.probability - b.probability).abs() <= 1e-5,
                "{prompt}: alone {} vs batched {}",
                a.probability,
                b.probability
            );
        }
    }

    // The batch RPC goes through the same batcher: 8 inputs, one forward pass, same answers.
    let mut client = worker.client().await;
    let batch = client
        .predict_batch(PredictBatchRequest {
            model_name: "sentiment".into(),
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            request_id: "batch-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.request_id, "batch-1");
    assert_eq!(batch.results.len(), prompts.len());
    for (r, batched) in batch.results.iter().zip(&together) {
        assert_eq!(r.batch_size, 8);
        assert!((r.probability - batched.probability).abs() <= 1e-5);
    }
    let histogram = worker
        .metric("inferencehub_worker_batch_size_count{model=\"sentiment\"}")
        .await
        .unwrap();
    // Warm-up runs outside the batcher: 8 + 8 inputs took exactly two forward passes.
    assert_eq!(histogram, 2.0);
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(
        dir.path(),
        &[
            "--max-batch-size",
            "64",
            "--max-wait",
            "3000ms",
            "--max-waiting",
            "4",
        ],
    )
    .await;
    let client = worker.client().await;
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.predict(tabular("iris", &[5.1, 3.5, 1.4, 0.2])).await })
        })
        .collect();
    let depth = "inferencehub_worker_queue_depth{model=\"iris\"}";
    worker.gauge_reaches(depth, 4.0).await;
    let mut c = client.clone();
    let started = std::time::Instant::now();
    let status = c
        .predict(tabular("iris", &[5.1, 3.5, 1.4, 0.2]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after the wait"
    );
    let status = c
        .predict_batch(PredictBatchRequest {
            model_name: "iris".into(),
            rows: vec![
                FeatureRow {
                    features: vec![5.1, 3.5, 1.4, 0.2]
                };
                5
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "more inputs than the queue holds"
    );

    // The queued ones are still answered once their batch runs.
    for handle in waiting {
        let r = handle.await.unwrap().unwrap().into_inner();
        assert_eq!(r.label, "setosa");
        assert_eq!(r.batch_size, 4);
    }
}

#[tokio::test]
async fn an_abandoned_request_is_dropped_before_compute() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(
        dir.path(),
        &["--max-batch-size", "64", "--max-wait", "1500ms"],
    )
    .await;
    let mut client = worker.client().await;
    let mut req = tonic::Request::new(tabular("iris", &[5.1, 3.5, 1.4, 0.2]));
    req.set_timeout(Duration::from_millis(200));
    let status = client.predict(req).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // After the partial batch would have run, nothing was computed for it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let dropped = worker
        .metric("inferencehub_worker_dropped_total{model=\"iris\",reason=\"cancelled\"}")
        .await
        .unwrap_or(0.0)
        + worker
            .metric("inferencehub_worker_dropped_total{model=\"iris\",reason=\"deadline\"}")
            .await
            .unwrap_or(0.0);
    assert_eq!(dropped, 1.0);
    let batches = worker
        .metric("inferencehub_worker_batch_size_count{model=\"iris\"}")
        .await;
    assert_eq!(batches, Some(0.0));
}

#[tokio::test]
async fn health_turns_serving_after_load_and_sigterm_drains_in_flight_requests() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut worker = Worker::spawn(&demo_models(), &["--max-wait", "1500ms"]).await;
    // Watch from the first moment: NOT_SERVING while the models load, then SERVING.
    let mut health = HealthClient::new(worker.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "inferencehub.v1.ModelInference".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().status();
    assert_eq!(
        first,
        ServingStatus::NotServing,
        "models cannot be loaded yet"
    );
    let mut seen = first;
    while seen != ServingStatus::Serving {
        seen = stream.message().await.unwrap().unwrap().status();
    }
    // The plain-HTTP mirror for load balancers says the same.
    assert!(
        worker
            .http_get("/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Two requests wait in a partial batch when SIGTERM arrives; both are answered.
    let client = worker.client().await;
    let in_flight: Vec<_> = ["lovely", "dreadful"]
        .into_iter()
        .map(|p| {
            let mut c = client.clone();
            tokio::spawn(async move { c.predict(text("sentiment", p)).await })
        })
        .collect();
    let depth = "inferencehub_worker_queue_depth{model=\"sentiment\"}";
    worker.gauge_reaches(depth, 2.0).await;
    let pid = worker.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = stream.message().await;
    assert!(
        !matches!(after, Ok(Some(ref m)) if m.status() == ServingStatus::Serving),
        "health must leave SERVING on SIGTERM: {after:?}"
    );
    drop(stream);
    drop(health);
    for handle in in_flight {
        let r = handle.await.unwrap().expect("in-flight request finishes");
        assert_eq!(r.into_inner().batch_size, 2);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
        .await
        .expect("worker exits after draining")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        worker.log()
    );
}

#[tokio::test]
async fn the_cli_client_predicts_lists_and_checks_health() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::serving(dir.path(), &[]).await;
    let addr = format!("https://127.0.0.1:{}", worker.grpc_port);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_inferencehub-worker"))
            .args(args)
            .args(["--addr", &addr])
            .arg("--tls-ca")
            .arg(&worker.certs.ca)
            .arg("--tls-cert")
            .arg(&worker.certs.client_cert)
            .arg("--tls-key")
            .arg(&worker.certs.client_key)
            .output()
            .unwrap()
    };
    let out = run(&[
        "predict",
        "--model",
        "iris",
        "--features",
        "6.3,3.3,6.0,2.5",
    ]);
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["label"], "virginica");

    let out = run(&["predict", "--model", "iris", "--features", "1,2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("features"));

    let out = run(&["models"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"name\":\"iris\""));

    let out = run(&["health"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");

    let probe = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_inferencehub-worker"))
            .args(["probe", "--addr", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
    };
    assert!(probe(worker.metrics_port).status.success());
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = nobody.local_addr().unwrap().port();
    drop(nobody);
    assert!(!probe(closed).status.success());
}

#[tokio::test]
async fn tls_material_can_come_inline_from_the_environment() {
    let dir = model_subset(&["iris"]);
    let worker = Worker::spawn_with(dir.path(), &[], true).await;
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let r = predict(&mut client, tabular("iris", &[5.1, 3.5, 1.4, 0.2])).await;
    assert_eq!(r.label, "setosa");
    // --help never shows secret values taken from the environment.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_inferencehub-worker"))
        .args(["serve", "--help"])
        .env("IHUB_WORKER_TLS_KEY", "-----BEGIN PRIVATE KEY----- secret")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("secret"));
}

/// A model folder the worker refuses stops it with a non-zero status and the reason in its
/// log, so a scheduler (ECS, `make dev`) sees the failure instead of a worker that never
/// serves.
#[tokio::test]
async fn a_refused_model_folder_exits_non_zero_naming_the_model() {
    let models = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(models.path().join("broken")).unwrap();
    std::fs::write(models.path().join("broken/model.onnx"), "not an ONNX graph").unwrap();
    let log = Worker::spawn(models.path(), &[]).await.failed_log().await;
    assert!(log.contains("loading model \\\"broken\\\""), "{log}");
}

/// The worker's compute threads (`compute-N`) in its process.
fn compute_threads(worker: &Worker) -> usize {
    let pid = worker.child.id().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("compute-"))
        .count()
}

/// The CPUs each of the worker's compute threads may run on (`Cpus_allowed_list`), in the
/// threads' order.
fn compute_cpus(worker: &Worker) -> Vec<String> {
    let pid = worker.child.id().unwrap();
    let mut threads: Vec<(usize, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let n = std::fs::read_to_string(path.join("comm")).ok()?;
            let n = n.trim().strip_prefix("compute-")?.parse().ok()?;
            Some((n, std::fs::read_to_string(path.join("status")).ok()?))
        })
        .map(|(n, status)| (n, allowed_list(&status)))
        .collect();
    threads.sort();
    threads.into_iter().map(|(_, cpus)| cpus).collect()
}

fn allowed_list(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// Whether `cpus` (each compute thread's allowed CPUs) are pinned, one CPU each and no two
/// alike (true), or all free to run where this test process may (false).
fn pinned(cpus: &[String]) -> bool {
    let mine = allowed_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    // (Where this process may run on one CPU only, pinned and free look the same.)
    if cpus.iter().all(|c| *c == mine) {
        return false;
    }
    let one_each: std::collections::HashSet<_> = cpus
        .iter()
        .inspect(|c| {
            assert!(
                c.parse::<usize>().is_ok(),
                "{cpus:?}: neither free nor pinned"
            )
        })
        .collect();
    assert_eq!(
        one_each.len(),
        cpus.len(),
        "two threads pinned together: {cpus:?}"
    );
    true
}

/// The worker computes on the cores it is given: `--threads` when set, else the cores its
/// process may use. Pinned to one core (`taskset`, which the standard library reads like a
/// container's CPU quota), it starts one compute thread, not one per core of the machine;
/// ONNX Runtime's pool is sized the same (its log line says so). Its compute threads are
/// pinned, each to a CPU of its own, exactly when there is one per CPU it may run on
/// (`--pin-threads auto`), and never with `--pin-threads off`.
#[tokio::test]
async fn the_worker_computes_on_the_cores_it_is_given() {
    // A folder with an ONNX model, so ONNX Runtime's pool is made too.
    let onnx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx-hostile");
    let dir = common::linked(&onnx, &["control-small"]);
    // How many CPUs this process may run on.
    let allowed = inferencehub_worker::kernels::allowed_cpus().len();

    let worker = Worker::serving(dir.path(), &["--threads", "3"]).await;
    assert_eq!(compute_threads(&worker), 3);
    assert_eq!(pinned(&compute_cpus(&worker)), allowed == 3);

    let one = Worker::spawn_under(&["taskset", "-c", "0"], dir.path(), &[]).await;
    one.wait_serving().await;
    assert_eq!(compute_threads(&one), 1);
    assert_eq!(compute_cpus(&one), ["0"]);
    let log = one.log();
    assert!(
        log.contains("ONNX Runtime loaded") && log.contains("threads=1"),
        "{log}"
    );

    let free = Worker::serving(dir.path(), &[]).await;
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(compute_threads(&free), cores);
    // One compute thread per CPU it may run on: each on its own (with a CPU quota below
    // those CPUs the pool is smaller, and stays free).
    let each = compute_cpus(&free);
    let each_pinned = pinned(&each);
    assert_eq!(each_pinned, cores > 1 && cores == allowed, "{each:?}");
    if each_pinned {
        assert!(free.log().contains("pinned to CPUs"), "{}", free.log());
    }

    let off = Worker::serving(dir.path(), &["--pin-threads", "off"]).await;
    assert!(!pinned(&compute_cpus(&off)));
}

/// `--isa`: the CPU encoder runs the instruction set it is told, every one the CPU has,
/// and answers as the widest does; the log says which it runs.
#[tokio::test]
async fn the_encoder_runs_the_instruction_set_it_is_told() {
    use inferencehub_worker::kernels::Isa;
    let dir = model_subset(&["sentiment"]);
    let prompts = [
        "I absolutely loved it, this is wonderful and works perfectly!",
        "The package arrived broken and nobody answered my emails.",
        "It was fine.",
    ];
    let answers = |worker: Worker| async move {
        let mut client = worker.client().await;
        let mut scores = Vec::new();
        for prompt in prompts {
            let r = predict(&mut client, text("sentiment", prompt)).await;
            scores.push(r.scores.iter().map(|s| s.probability).collect::<Vec<_>>());
        }
        (scores, worker.log())
    };
    let names: Vec<&str> = Isa::all().into_iter().map(Isa::name).collect();
    let widest = *names.last().unwrap();
    let (want, log) = answers(Worker::serving(dir.path(), &[]).await).await;
    assert!(
        log.contains(&format!("instruction_set={widest}")),
        "auto runs {widest}: {log}"
    );
    // The demo model's BERT WordPiece tokenizer takes the worker's fast path.
    assert!(log.contains(r#"tokenizer="fast path""#), "{log}");
    for name in &names {
        let (got, log) = answers(Worker::serving(dir.path(), &["--isa", name]).await).await;
        assert!(log.contains(&format!("instruction_set={name}")), "{log}");
        for (got, want) in got.iter().zip(&want) {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{name}: {got:?} against {widest}'s {want:?}"
                );
            }
        }
    }
    // One the CPU lacks: the worker refuses to start, naming it and what the CPU has.
    for lacking in ["avx512", "avx2"]
        .into_iter()
        .filter(|n| !names.contains(n))
    {
        let log = Worker::spawn(dir.path(), &["--isa", lacking])
            .await
            .failed_log()
            .await;
        assert!(
            log.contains(&format!("--isa {lacking}: this CPU lacks it")),
            "{log}"
        );
    }
}

/// A gRPC address held for a moment when the worker starts (on loopback, a client that
/// dialled the port before the worker listened can hold it as its own source port) delays
/// the worker instead of stopping it.
#[tokio::test]
async fn a_port_held_for_a_moment_delays_the_worker_instead_of_stopping_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let dir = model_subset(&["iris"]);
    let listen = format!("--listen={addr}");
    let worker = Worker::serving(dir.path(), &[&listen]).await;
    release.join().unwrap();
    assert_eq!(
        worker.grpc_port.to_string(),
        addr.rsplit(':').next().unwrap()
    );
    assert!(worker.log().contains("address in use"), "{}", worker.log());
}
