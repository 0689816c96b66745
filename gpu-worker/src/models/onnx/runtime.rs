//! ONNX Runtime, loaded at run time from its shared library (`libonnxruntime.so`, from the
//! pinned `onnxruntime` wheel on CPU, `onnxruntime-gpu` for CUDA): one environment per
//! process, with one intra-op thread pool that every ONNX model shares (threads that do not
//! spin while idle: the worker also runs candle's encoders and the batching threads).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use ort::environment::{Environment, GlobalThreadPoolOptions};

/// The ONNX Runtime release the worker is built and tested against.
pub const VERSION: &str = "1.31.1";
/// Where the library is looked for unless `IHUB_WORKER_ONNXRUNTIME` says otherwise: a bare
/// file name, so the dynamic loader's search path (`LD_LIBRARY_PATH`, `ldconfig`) decides.
pub const DEFAULT_LIBRARY: &str = "libonnxruntime.so.1.31.1";
/// The variable (and the worker's `--onnxruntime` flag) naming the library.
pub const LIBRARY_VAR: &str = "IHUB_WORKER_ONNXRUNTIME";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
static THREADS: OnceLock<usize> = OnceLock::new();

/// The threads of the intra-op pool every ONNX model shares (the worker's `--threads`);
/// without it, the cores this process may use. ONNX Runtime's own default is the machine's
/// physical cores, whatever CPU quota the container has.
pub fn use_threads(threads: usize) {
    let _ = THREADS.set(threads.max(1));
}

/// Names the library the first ONNX model loads (the worker's `--onnxruntime`); without
/// it, the one `IHUB_WORKER_ONNXRUNTIME` names, else [`DEFAULT_LIBRARY`]. A worker that
/// serves no ONNX model never loads it.
pub fn use_library(path: PathBuf) {
    let _ = LIBRARY.set(path);
}

/// The process's environment, made on first use (later calls return the first outcome).
/// A missing file, a library that is not ONNX Runtime, or a release older than the C API
/// the worker is built for (1.31; later releases serve it unchanged) is an error naming the
/// path and, for a release, the version found.
pub fn environment() -> anyhow::Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = LIBRARY.get().cloned().unwrap_or_else(configured_library);
            start(&path).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The library the environment names, or the default.
fn configured_library() -> PathBuf {
    std::env::var_os(LIBRARY_VAR)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_LIBRARY), PathBuf::from)
}

fn start(path: &Path) -> anyhow::Result<Environment> {
    let fix = format!(
        "set {LIBRARY_VAR} to its libonnxruntime.so; `make onnxruntime` fetches it from the \
         pinned wheel"
    );
    if path.components().count() > 1 && !path.is_file() {
        bail!(
            "ONNX Runtime {VERSION} not found at {} ({fix})",
            path.display()
        );
    }
    let builder = ort::init_from(path).map_err(|e| {
        anyhow::anyhow!(
            "loading ONNX Runtime {VERSION} from {}: {e} ({fix})",
            path.display()
        )
    })?;
    let threads = *THREADS.get_or_init(crate::models::device::cores);
    let pool = GlobalThreadPoolOptions::default()
        .with_intra_threads(threads)
        .and_then(|p| p.with_inter_threads(1))
        .and_then(|p| p.with_spin_control(false))
        .context("ONNX Runtime thread pool")?;
    let environment = builder
        .with_name("inferencehub-worker")
        .with_global_thread_pool(pool)
        .build()
        .context("creating the ONNX Runtime environment")?;
    tracing::info!(library = %path.display(), threads, "ONNX Runtime loaded");
    Ok(environment)
}
