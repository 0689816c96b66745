//! Helpers for tests that run the real worker binary over mutual TLS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use inferencehub_devkit::certs::{self, CertPaths};
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The demo models built by `make models`.
pub fn demo_models() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    assert!(
        dir.join("sentiment/head.safetensors").is_file() && dir.join("iris/tabular.json").is_file(),
        "demo models missing in {}: run `make models` first",
        dir.display()
    );
    dir
}

/// A model dir holding only the named demo models (symlinked).
pub fn model_subset(names: &[&str]) -> tempfile::TempDir {
    linked(&demo_models().canonicalize().unwrap(), names)
}

/// A model dir holding the folders `names` of `src`, symlinked.
pub fn linked(src: &Path, names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::os::unix::fs::symlink(src.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// How the in-process tests load models: the CPU, f32, prompts up to 4 KiB.
pub fn cpu_options() -> inferencehub_worker::models::LoadOptions {
    inferencehub_worker::models::LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        max_prompt_bytes: 4096,
    }
}

/// A worker process on free ports, killed on drop.
pub struct Worker {
    pub child: Child,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub certs: CertPaths,
    /// The CA behind `certs`, to issue more client certificates.
    pub ca: certs::DevCa,
    pub dir: tempfile::TempDir,
}

impl Worker {
    /// Starts `inferencehub-worker serve` with fresh certificates and `extra` flags, and
    /// waits until it prints its addresses (models may still be loading).
    pub async fn spawn(model_dir: &Path, extra: &[&str]) -> Worker {
        Self::spawn_with(model_dir, extra, false).await
    }

    /// Like [`Worker::spawn`]; with `inline_tls` the PEM texts themselves go through the
    /// `IHUB_WORKER_TLS_*` environment variables (as ECS injects secrets) instead of paths.
    pub async fn spawn_with(model_dir: &Path, extra: &[&str], inline_tls: bool) -> Worker {
        Self::start(model_dir, extra, inline_tls, &[], &[]).await
    }

    /// Like [`Worker::spawn`], with `env` set for the worker.
    pub async fn spawn_env(model_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Worker {
        Self::start(model_dir, extra, false, env, &[]).await
    }

    /// Like [`Worker::spawn`], the binary run by `wrapper` (e.g. `["taskset", "-c", "0"]`).
    pub async fn spawn_under(wrapper: &[&str], model_dir: &Path, extra: &[&str]) -> Worker {
        Self::start(model_dir, extra, false, &[], wrapper).await
    }

    async fn start(
        model_dir: &Path,
        extra: &[&str],
        inline_tls: bool,
        env: &[(&str, String)],
        wrapper: &[&str],
    ) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let (certs, ca) = certs::generate_with_ca(&dir.path().join("certs")).unwrap();
        // Every test worker checks client certificates against its CA's revocation list
        // (empty until a test revokes one: `Worker::revoke`).
        let crl = dir.path().join("certs").join("crl.pem");
        ca.write_crl(&[], &crl).unwrap();
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let binary = env!("CARGO_BIN_EXE_inferencehub-worker");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.arg("serve");
        // Port 0 unless the test names the gRPC address itself.
        if !extra.iter().any(|a| a.starts_with("--listen")) {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--model-dir")
            .arg(model_dir);
        for (flag, env, path) in [
            ("--tls-cert", "IHUB_WORKER_TLS_CERT", &certs.server_cert),
            ("--tls-key", "IHUB_WORKER_TLS_KEY", &certs.server_key),
            ("--tls-client-ca", "IHUB_WORKER_TLS_CLIENT_CA", &certs.ca),
            ("--tls-client-crl", "IHUB_WORKER_TLS_CLIENT_CRL", &crl),
        ] {
            if inline_tls {
                command.env(env, std::fs::read_to_string(path).unwrap());
            } else {
                command.arg(flag).arg(path);
            }
        }
        let mut child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("worker binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("inferencehub-worker listening") {
                    return line;
                }
            }
            panic!("worker exited before listening");
        })
        .await
        .expect("worker prints its addresses");
        let port = |key: &str| -> u16 {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        };
        Worker {
            grpc_port: port("grpc="),
            metrics_port: port("metrics="),
            child,
            certs,
            ca,
            dir,
        }
    }

    /// Waits (at most a minute) for a worker that must stop on its own, requires a non-zero
    /// exit, and returns its log.
    pub async fn failed_log(&mut self) -> String {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the worker exits")
            .unwrap();
        assert!(!status.success(), "{status:?}");
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap()
    }

    /// Revokes the client certificates with these serial numbers: rewrites the worker's
    /// revocation list and sends SIGHUP, which re-reads it.
    pub fn revoke(&self, serials: &[Vec<u8>]) {
        self.ca
            .write_crl(serials, &self.dir.path().join("certs").join("crl.pem"))
            .unwrap();
        self.sighup();
    }

    /// Sends SIGHUP: the worker re-reads its certificates, key, CA and revocation lists.
    pub fn sighup(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts a worker and waits until health says SERVING.
    pub async fn serving(model_dir: &Path, extra: &[&str]) -> Worker {
        let worker = Self::spawn(model_dir, extra).await;
        worker.wait_serving().await;
        worker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))
            .unwrap()
            .timeout(Duration::from_secs(60))
    }

    /// A channel with the worker's CA and a client certificate from `client`.
    pub async fn channel_with(&self, ca: &Path, client: Option<(&Path, &Path)>) -> Channel {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        self.endpoint().tls_config(tls).unwrap().connect_lazy()
    }

    /// A properly authenticated channel.
    pub async fn channel(&self) -> Channel {
        self.channel_with(
            &self.certs.ca,
            Some((&self.certs.client_cert, &self.certs.client_key)),
        )
        .await
    }

    pub async fn client(&self) -> ModelInferenceClient<Channel> {
        ModelInferenceClient::new(self.channel().await)
    }

    pub async fn health(&self) -> ServingStatus {
        self.try_health().await.unwrap()
    }

    async fn try_health(&self) -> Result<ServingStatus, tonic::Status> {
        let mut health = HealthClient::new(self.channel().await);
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        Ok(ServingStatus::try_from(status).unwrap())
    }

    pub async fn wait_serving(&self) {
        let wait = async {
            loop {
                match self.try_health().await {
                    Ok(ServingStatus::Serving) => return,
                    Ok(_) => {}
                    Err(e) => panic!("the worker stopped answering ({e}); log:\n{}", self.log()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .is_err()
        {
            panic!("worker never became SERVING; log:\n{}", self.log());
        }
    }

    /// A plain HTTP/1.1 GET on the metrics port: the whole response, status line first.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let body = self.http_get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    /// The sum over the series that carry these labels (and any others), e.g.
    /// `inferencehub_worker_queue_depth{model="iris"}`; `None` when no series does.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let wanted: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .collect();
        let values: Vec<f64> = text
            .lines()
            .filter_map(|line| {
                let (head, value) = line.rsplit_once(' ')?;
                let (n, labels) = head.split_once('{').unwrap_or((head, "}"));
                let labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                (n == name && wanted.iter().all(|w| labels.contains(w)))
                    .then(|| value.parse().ok())?
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Waits (bounded) until a gauge of the worker reads `want`.
    pub async fn gauge_reaches(&self, series: &str, want: f64) {
        self.metric_settles(series, Duration::from_secs(10), |value| value == want)
            .await
            .unwrap_or_else(|last| panic!("{series} never read {want} (last {last:?})"));
    }

    /// Polls a metric until `settled` holds, for at most `within`. Counters the worker bumps
    /// from the connection tasks lag the event a test saw, so a single read can come early.
    /// Gives back the last reading when the time runs out.
    pub async fn metric_settles(
        &self,
        series: &str,
        within: Duration,
        settled: impl Fn(f64) -> bool,
    ) -> Result<f64, Option<f64>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.metric(series).await;
            if let Some(value) = value.filter(|value| settled(*value)) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(value);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every version `client`'s worker lists (`ListModels`).
pub async fn models(
    client: &mut ModelInferenceClient<Channel>,
) -> Vec<inferencehub_proto::pb::ModelInfo> {
    client
        .list_models(inferencehub_proto::pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
}

/// A text fixture's `expected.json`: the architecture its framework saved, and per prompt
/// the token ids and the logits the framework computed for it alone.
#[derive(Debug, serde::Deserialize)]
pub struct TextExpected {
    pub architecture: String,
    pub cases: Vec<TextCase>,
}

/// One prompt of a [`TextExpected`].
#[derive(Debug, serde::Deserialize)]
pub struct TextCase {
    pub prompt: String,
    pub input_ids: Vec<u32>,
    pub logits: Vec<f32>,
}

/// `dir`'s `expected.json`.
pub fn text_expected(dir: &Path) -> TextExpected {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

/// `dir`'s `expected.json` with each prompt's logits as ONNX Runtime computes them for it
/// alone on this CPU: its graph (`model.onnx`, taking `input_ids`, `attention_mask` and
/// `token_type_ids`, giving `logits`) run through the library directly, none of the
/// worker's model code in between. For int8 graphs, whose answers depend on the CPU: ONNX
/// Runtime multiplies u8 by s8 exactly where the CPU has VNNI or AMX, and with pairwise
/// sums that saturate at 16 bits on AVX2 alone (the fixture's logits came from the former;
/// an AVX2-only EPYC's are up to 0.4 further from the fp32 model's).
pub fn text_expected_from_onnx_runtime(dir: &Path) -> TextExpected {
    use ort::value::Tensor;
    let mut expected = text_expected(dir);
    let environment = inferencehub_worker::models::onnx::runtime::environment().unwrap();
    let mut session = ort::session::Session::builder(environment)
        .unwrap()
        .commit_from_file(dir.join("model.onnx"))
        .unwrap();
    for case in &mut expected.cases {
        let n = case.input_ids.len();
        let tensor = |data: Vec<i64>| Tensor::from_array(([1, n], data)).unwrap();
        let ids = case.input_ids.iter().map(|&id| i64::from(id)).collect();
        let outputs = session
            .run(ort::inputs![
                "input_ids" => tensor(ids),
                "attention_mask" => tensor(vec![1; n]),
                "token_type_ids" => tensor(vec![0; n]),
            ])
            .unwrap();
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        case.logits = logits.to_vec();
    }
    expected
}

/// Softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Loads the text model folder `dir` as the worker does and holds it to `expected` (its
/// `expected.json`, [`text_expected`], or ONNX Runtime's answers on this CPU,
/// [`text_expected_from_onnx_runtime`]): the three fixture labels, the tokenizer's ids for
/// every prompt, and each prompt's probabilities within `alone` of the softmax of the
/// expected logits when run alone (with the same best label) and within `batched` in one
/// padded batch of all the prompts. Returns the model and what was expected.
pub fn check_text_fixture(
    dir: &Path,
    name: &str,
    expected: TextExpected,
    alone: f32,
    batched: f32,
) -> (inferencehub_worker::models::LoadedModel, TextExpected) {
    use inferencehub_worker::models::{LoadOptions, ModelInput, argmax, load_model};
    let options = LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        max_prompt_bytes: 4096,
    };
    let mut model = load_model(dir, name, &options).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(model.info.labels, ["negative", "neutral", "positive"]);
    let mut inputs = Vec::new();
    for case in &expected.cases {
        let input = model.prepare(&case.prompt, &[]).unwrap();
        assert_eq!(
            input,
            ModelInput::Tokens(case.input_ids.clone()),
            "{name}: token ids of {:?}",
            case.prompt
        );
        inputs.push(input);
    }
    // Prompts of different lengths in one batch: padding must not leak into the answer.
    let batch = model.model.forward(&inputs).unwrap();
    for (i, case) in expected.cases.iter().enumerate() {
        let one = model.model.forward(&inputs[i..=i]).unwrap().remove(0).row;
        let want = softmax(&case.logits);
        for (got, tolerance, how) in [
            (&one, alone, "alone"),
            (&batch[i].row, batched, "in a batch"),
        ] {
            let worst = inferencehub_devkit::largest_error(
                got.iter().zip(&want).map(|(g, w)| (g - w).abs()),
            );
            assert!(
                worst < tolerance,
                "{name} {how}: {:?} gave {got:?}, expected {want:?} ({worst:e})",
                case.prompt
            );
        }
        assert_eq!(argmax(&one).0, argmax(&want).0, "{name} {:?}", case.prompt);
    }
    (model, expected)
}
