//! What the benchmarks share: the ONNX Runtime side in a Python process of its own (JSON
//! lines over stdin/stdout, so neither side pays for the pipe inside its timings), the
//! release worker binary over mutual-TLS gRPC, and the plot of speed ratios.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferencehub_bench::load::{Grpc, Input, Summary, Target, closed_loop, connect};
use inferencehub_devkit::certs;
use inferencehub_proto::settings::WorkerClientTls;
use inferencehub_worker::models::{LoadOptions, LoadedModel, ModelInput, load_model};
use serde_json::{Value, json};

/// The release worker binary (beside the benchmark's own; the make target builds it)
/// serving one model folder over mutual TLS, on fresh certificates. Killed on drop.
pub struct WorkerProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// The model folder (a link to the one served) and the certificates.
    _dirs: [tempfile::TempDir; 2],
}

impl WorkerProcess {
    /// Starts the worker on free ports serving `model_dir` as `name`, and returns it with a
    /// gRPC target on it once the model answers `warm_up` (the models load after the ports
    /// open).
    pub async fn serve_one(model_dir: &Path, name: &str, warm_up: &Input) -> (WorkerProcess, Grpc) {
        use tokio::io::AsyncBufReadExt;
        let models = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(model_dir.canonicalize().unwrap(), models.path().join(name))
            .unwrap();
        let cert_dir = tempfile::tempdir().unwrap();
        let certs = certs::generate(cert_dir.path()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let binary = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("inferencehub-worker");
        assert!(binary.is_file(), "build {} first", binary.display());
        let mut child = tokio::process::Command::new(binary)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--model-dir")
            .arg(models.path())
            .arg("--tls-cert")
            .arg(&certs.server_cert)
            .arg("--tls-key")
            .arg(&certs.server_key)
            .arg("--tls-client-ca")
            .arg(&certs.ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .map(|a| format!("https://{a}"))
            .unwrap();
        let tls = WorkerClientTls::from_files(&certs.ca, &certs.client_cert, &certs.client_key);
        let process = WorkerProcess {
            child,
            _dirs: [models, cert_dir],
        };
        for _ in 0..600 {
            if let Ok(c) = connect(&addr, &tls, Duration::from_secs(30)).await {
                let probe = Grpc::new(vec![c.clone()], Duration::from_secs(30));
                if probe.send(name, warm_up).await.status == 200 {
                    return (process, Grpc::new(vec![c], Duration::from_secs(60)));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the worker never answered for {name}");
    }
}

/// The best (by requests/s) of three closed-loop runs of `model` at 1 caller and at 32,
/// after `warm_up` requests at 4; every request must be answered.
pub async fn one_and_many<T: Target>(
    target: Arc<T>,
    model: &str,
    inputs: &[Input],
    warm_up: u64,
    (one, many): (u64, u64),
) -> (Summary, Summary) {
    let run =
        |callers, requests| closed_loop(target.clone(), model, inputs.to_vec(), callers, requests);
    run(4, warm_up).await;
    let (mut best_one, mut best_many): (Option<Summary>, Option<Summary>) = (None, None);
    for _ in 0..3 {
        for (best, callers, requests) in [(&mut best_one, 1, one), (&mut best_many, 32, many)] {
            let s = run(callers, requests).await;
            assert_eq!(s.failed, 0, "{:?}", s.statuses);
            if best.as_ref().is_none_or(|b| s.rps > b.rps) {
                *best = Some(s);
            }
        }
    }
    (best_one.unwrap(), best_many.unwrap())
}

/// How many calls of `f` make a sample of about `seconds` (from one timed call), within
/// `min..=max`.
pub fn calls_for(seconds: f64, min: usize, max: usize, mut f: impl FnMut()) -> usize {
    let started = Instant::now();
    f();
    let one = started.elapsed().as_secs_f64().max(1e-6);
    ((seconds / one) as usize).clamp(min, max)
}

/// Seconds per call over `calls` calls of `f`.
pub fn per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..calls {
        f();
    }
    started.elapsed().as_secs_f64() / calls as f64
}

/// A `benches/*.py` script answering one JSON object per line; its first line is its
/// readiness (with `"onnxruntime": version`). Told to quit on drop.
pub struct PyBridge {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// ONNX Runtime's version, from the readiness line.
    pub version: String,
    /// The readiness line.
    pub ready: Value,
}

impl PyBridge {
    /// Starts `python3 benches/<script> <args>` (`$PYTHON` overrides the interpreter).
    pub fn start<S: AsRef<OsStr>>(script: &str, args: &[S]) -> PyBridge {
        Self::start_env(script, args, &[])
    }

    /// [`PyBridge::start`] with `env` added to the script's environment.
    pub fn start_env<S: AsRef<OsStr>>(
        script: &str,
        args: &[S],
        env: &[(&str, &OsStr)],
    ) -> PyBridge {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join(script);
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(path)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with onnx and onnxruntime (the make target installs them)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut bridge = PyBridge {
            child,
            stdin,
            stdout,
            version: String::new(),
            ready: Value::Null,
        };
        bridge.ready = bridge.read();
        bridge.version = bridge.ready["onnxruntime"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        bridge
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ORT answered {line:?}: {e}"))
    }

    /// Sends one request, returns its answer.
    pub fn call(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }

    /// `{"cmd": "time", <key>: inputs, "reps": reps}` → the script's own seconds.
    pub fn seconds(&mut self, key: &str, inputs: Value, reps: usize) -> f64 {
        self.call(json!({"cmd": "time", key: inputs, "reps": reps}))["seconds"]
            .as_f64()
            .unwrap()
    }
}

impl Drop for PyBridge {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.child.wait();
    }
}

/// A bar plot of ratios against a baseline drawn at 1.0: one group per `(label, ratios)`,
/// one bar per series (`(name, colour)`), gridlines every 0.25 (or wider, up to 16 lines).
pub fn ratio_svg(title: &str, groups: &[(String, Vec<f64>)], series: &[(&str, &str)]) -> String {
    let (w, h, left, bottom, top) = (760.0, 360.0, 60.0, 90.0, 40.0);
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.25f64, f64::max)
        .ceil();
    let plot_h = h - bottom - top;
    let y = |v: f64| top + plot_h * (1.0 - v / max);
    let group = (w - left - 20.0) / groups.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n"
    );
    // At most 16 gridlines.
    let step = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|s| max / s <= 16.0)
        .unwrap_or(max / 16.0);
    let mut tick = 0.0;
    while tick <= max + 1e-9 {
        out += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.2}x</text>\n",
            w - 20.0,
            left - 6.0,
            y(tick) + 4.0,
            y = y(tick)
        );
        tick += step;
    }
    out += &format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n",
        w - 20.0,
        y = y(1.0)
    );
    let bar = group * 0.66 / series.len().max(1) as f64;
    for (i, (label, values)) in groups.iter().enumerate() {
        let x0 = left + group * i as f64 + group * 0.17;
        for (j, (v, (_, color))) in values.iter().zip(series).enumerate() {
            let x = x0 + bar * j as f64;
            out += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.2}</text>\n",
                y(*v),
                y(0.0) - y(*v),
                x + bar / 2.0,
                y(*v) - 3.0
            );
        }
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            x0 + bar * series.len() as f64 / 2.0,
            h - bottom + 16.0
        );
    }
    for (j, (name, color)) in series.iter().enumerate() {
        let x = left + 240.0 * j as f64;
        out += &format!(
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\">{name}</text>\n",
            h - 40.0,
            x + 18.0,
            h - 30.0
        );
    }
    out += &format!(
        "<text x=\"{left}\" y=\"{:.1}\">dashed: baseline = 1.0</text>\n</svg>\n",
        h - 10.0
    );
    out
}

/// The CPU's model name (`/proc/cpuinfo`), for the tables: the machines vary.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Model folder `dir` loaded as the worker loads it on the CPU in f32, named `name`; a
/// missing folder says which make target builds it.
pub fn load_cpu(dir: &Path, name: &str, target: &str) -> LoadedModel {
    assert!(
        dir.is_dir(),
        "{} missing: run `make {target}`",
        dir.display()
    );
    load_model(
        dir,
        name,
        &LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: candle_core::DType::F32,
            max_prompt_bytes: 1 << 20,
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// Seconds per forward pass of `model` over `inputs`, one sample of about 0.5 s.
pub fn forward_seconds(model: &mut LoadedModel, inputs: &[ModelInput]) -> f64 {
    let mut forward = || {
        std::hint::black_box(model.model.forward(inputs).unwrap());
    };
    let calls = calls_for(0.5, 1, 10_000, &mut forward);
    per_call(calls, &mut forward)
}
