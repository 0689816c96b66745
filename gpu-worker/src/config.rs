//! Command line and environment, read once at start. Every flag of `serve` can also be set
//! through an `IHUB_WORKER_*` environment variable; the operator client subcommands read
//! the gateway's worker-client variables (`IHUB_GATEWAY_WORKER_TLS_*`), so one environment
//! serves both. Each default is written once, in its `#[arg]`; durations carry their unit
//! (`5s`, `250ms`). `docs/configuration.md` is generated from these definitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use inferencehub_proto::settings::{
    self, DEFAULT_MAX_PROMPT_BYTES, DEFAULT_WORKER_TIMEOUT, WorkerClientTls, duration,
};

use crate::batching::BatchConfig;

/// InferenceHub model worker: serves models over mutual-TLS gRPC.
#[derive(Debug, Parser)]
#[command(name = "inferencehub-worker", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every model under --model-dir and serve them over gRPC with mutual TLS.
    Serve(Box<ServeArgs>),
    /// Ask a worker for one prediction (prints JSON).
    Predict(PredictArgs),
    /// List a worker's models (prints JSON lines).
    Models(ClientArgs),
    /// Check a worker's grpc.health.v1 status over mutual TLS: exit 0 when SERVING.
    Health(ClientArgs),
    /// Check the plain-HTTP health mirror on the metrics port (container health checks,
    /// which hold no client certificate): exit 0 when it answers 200.
    Probe(ProbeArgs),
}

/// Flags of `probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// host:port of the metrics listener.
    #[arg(long, env = "IHUB_WORKER_PROBE_ADDR", default_value = "127.0.0.1:9464")]
    pub addr: String,
}

/// How a client reaches a worker.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Worker URL.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    pub addr: String,
    /// Mutual-TLS material (the gateway's variables).
    #[command(flatten)]
    pub tls: WorkerClientTls,
    /// Connect and call timeout.
    #[arg(long, default_value = DEFAULT_WORKER_TIMEOUT, value_parser = duration)]
    pub timeout: Duration,
}

/// Flags of `predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Connection.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Text input (text models).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Comma-separated features (tabular models).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub features: Vec<f32>,
}

/// How the worker follows changes to its model repository.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ModelControl {
    /// Read once, at start.
    None,
    /// Read again every poll interval.
    Poll,
    /// Read again for one model when an admin calls LoadModel; UnloadModel stops one.
    Explicit,
}

/// Whether the compute threads are pinned to CPUs (`kernels::Pinning`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PinThreads {
    /// Pinned when there is one compute thread per CPU the process may run on.
    Auto,
    /// Thread N on the N-th CPU the process may run on.
    On,
    /// Never pinned.
    Off,
}

impl From<PinThreads> for crate::kernels::Pinning {
    fn from(pin: PinThreads) -> Self {
        match pin {
            PinThreads::Auto => Self::Auto,
            PinThreads::On => Self::On,
            PinThreads::Off => Self::Off,
        }
    }
}

/// The instruction set the CPU encoder's kernels run on (`kernels::Isa`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InstructionSet {
    /// The widest this CPU has.
    Auto,
    /// AVX-512 (x86-64-v4).
    Avx512,
    /// AVX2 with FMA (x86-64-v3).
    Avx2,
    /// Plain scalar code.
    Scalar,
}

impl InstructionSet {
    /// Makes the kernels of models loaded from now on run on this instruction set; an
    /// error, naming what the CPU has, when the CPU lacks it.
    pub fn apply(self) -> anyhow::Result<crate::kernels::Isa> {
        use crate::kernels::Isa;
        let name = match self {
            Self::Auto => {
                Isa::set_widest(None);
                return Ok(Isa::best());
            }
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Scalar => "scalar",
        };
        let Some(isa) = Isa::named(name) else {
            let has: Vec<&str> = Isa::all().into_iter().map(Isa::name).collect();
            anyhow::bail!(
                "--isa {name}: this CPU lacks it (it has {})",
                has.join(", ")
            );
        };
        Isa::set_widest(Some(isa));
        Ok(isa)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for CloudWatch and other collectors).
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server (port 0 picks a free port; the chosen one is printed).
    #[arg(long, env = "IHUB_WORKER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// The model repository, a folder or `s3://bucket/prefix` (mirrored into a temporary
    /// folder; the AWS SDK's settings from the environment): one subfolder per model, named
    /// as the API names it, holding the model or its versions side by side
    /// (`name/<version>/`, docs/models.md).
    #[arg(
        long,
        visible_alias = "model-repo",
        env = "IHUB_WORKER_MODEL_DIR",
        default_value = "models"
    )]
    pub model_dir: crate::mirror::ModelRepo,

    /// `none`: the repository is read once, at start. `poll`: it is read again every
    /// --poll-interval; a new or changed version loads beside the others and takes traffic
    /// once warmed up, a removed one finishes its queue and unloads, and one that fails to
    /// load is listed UNAVAILABLE with the loader's message while the rest keep serving.
    /// `explicit`: the same for one model when an admin certificate calls LoadModel;
    /// UnloadModel stops serving one.
    #[arg(
        long,
        env = "IHUB_WORKER_MODEL_CONTROL",
        value_enum,
        default_value = "none"
    )]
    pub model_control: ModelControl,

    /// The memory the served model versions may hold, e.g. `6GiB` (default: no limit; on
    /// CUDA the device's free memory is checked as well). A version whose files would take
    /// the total over it is refused with the reason and listed UNAVAILABLE; the served ones
    /// stay. During a swap the old and the new version are both held.
    #[arg(long, env = "IHUB_WORKER_MEMORY_BUDGET", value_parser = bytes)]
    pub memory_budget: Option<u64>,

    /// How often `--model-control poll` reads the repository.
    #[arg(long, env = "IHUB_WORKER_POLL_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub poll_interval: Duration,

    /// PEM certificate chain the server presents: a file path, or the PEM text itself
    /// (so a container can receive it from Secrets Manager as an environment variable).
    #[arg(long, env = "IHUB_WORKER_TLS_CERT", hide_env_values = true)]
    pub tls_cert: PathBuf,

    /// PEM private key of --tls-cert: a file path or the PEM text. Never logged or shown.
    #[arg(long, env = "IHUB_WORKER_TLS_KEY", hide_env_values = true)]
    pub tls_key: PathBuf,

    /// PEM CA that client certificates must chain to (path or PEM text). Clients without
    /// a certificate from it get no answer.
    #[arg(long, env = "IHUB_WORKER_TLS_CLIENT_CA", hide_env_values = true)]
    pub tls_client_ca: PathBuf,

    /// PEM certificate revocation lists of --tls-client-ca (path or PEM text; several may be
    /// concatenated). A client certificate they revoke fails the handshake; re-read on
    /// SIGHUP with the certificates, and --max-connection-age closes the connections a
    /// revoked certificate already holds.
    #[arg(long, env = "IHUB_WORKER_TLS_CLIENT_CRL", hide_env_values = true)]
    pub tls_client_crl: Option<PathBuf>,

    /// Client certificate names (subject alternative names) allowed to call every
    /// service, comma-separated. Unset with --tls-health-names and --tls-catalog-names
    /// unset: any certificate from --tls-client-ca may. A certificate for another name fails the handshake.
    #[arg(long, env = "IHUB_WORKER_TLS_CLIENT_NAMES", value_delimiter = ',')]
    pub tls_client_names: Vec<String>,

    /// Client certificate names allowed to call only grpc.health.v1 (the gateway's
    /// health function), comma-separated.
    #[arg(long, env = "IHUB_WORKER_TLS_HEALTH_NAMES", value_delimiter = ',')]
    pub tls_health_names: Vec<String>,

    /// Client certificate names allowed to call only the ModelRepository admin service
    /// (the index, and with --model-control explicit LoadModel and UnloadModel),
    /// comma-separated. No other certificate may call it.
    #[arg(long, env = "IHUB_WORKER_TLS_ADMIN_NAMES", value_delimiter = ',')]
    pub tls_admin_names: Vec<String>,

    /// Client certificate names allowed to call only ListModels and grpc.health.v1 (the
    /// gateway's models function, which lists the catalogue and never predicts),
    /// comma-separated.
    #[arg(long, env = "IHUB_WORKER_TLS_CATALOG_NAMES", value_delimiter = ',')]
    pub tls_catalog_names: Vec<String>,

    /// Longest time from accepting a TCP connection to a finished TLS handshake; slower
    /// connections are closed.
    #[arg(long, env = "IHUB_WORKER_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub tls_handshake_timeout: Duration,

    /// Most authenticated (handshake finished) connections open at once; one more is
    /// closed after its handshake.
    #[arg(long, env = "IHUB_WORKER_MAX_CONNECTIONS", default_value_t = 1_024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most connections still in their TLS handshake at once, apart from the
    /// authenticated ones. When it is full, the oldest pending handshake is closed to make
    /// way for the newest: a real client's handshake takes milliseconds, so idle peers
    /// holding sockets open cannot lock it out.
    #[arg(long, env = "IHUB_WORKER_MAX_HANDSHAKES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_handshakes: u32,

    /// HTTP/2 streams (concurrent calls) one connection may have open.
    #[arg(long, env = "IHUB_WORKER_MAX_CONCURRENT_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_streams: u32,

    /// Longest a connection lives: past it the worker sends GOAWAY (calls in flight finish)
    /// and the client connects again, handshaking with today's certificates and revocation
    /// lists.
    #[arg(long, env = "IHUB_WORKER_MAX_CONNECTION_AGE", default_value = "5m", value_parser = positive_duration)]
    pub max_connection_age: Duration,

    /// Address of the plain-HTTP endpoint serving GET /metrics and GET /healthz. Keep it
    /// on loopback unless a load balancer's health check must reach it (the ECS template
    /// opens it only to the load balancer's security group).
    #[arg(
        long,
        env = "IHUB_WORKER_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// Where models run: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "IHUB_WORKER_DEVICE", default_value = "cpu")]
    pub device: String,

    /// ONNX Runtime's shared library (release 1.31, from the `onnxruntime` wheel on CPU,
    /// `onnxruntime-gpu` for CUDA), loaded when the first ONNX model is. Default:
    /// `libonnxruntime.so.1.31.1`, looked up on the loader's search path (as is any bare
    /// file name). A missing library or an older release stops the start.
    #[arg(long, env = crate::models::onnx::runtime::LIBRARY_VAR)]
    pub onnxruntime: Option<PathBuf>,

    /// What text encoders compute in: f32, f16 or bf16. Default: f16 on CUDA, f32 on the
    /// CPU (where half precision is slower). Tabular and ONNX models always run in f32.
    #[arg(long, env = "IHUB_WORKER_DTYPE", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: Option<String>,

    /// Most inputs in one forward pass.
    #[arg(long, env = "IHUB_WORKER_MAX_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,

    /// Longest wait before a partial batch runs. 0 runs whatever is queued as soon as the
    /// model is free (batches still form while it computes), after the refill grace.
    #[arg(long, env = "IHUB_WORKER_MAX_WAIT", default_value = "0", value_parser = duration)]
    pub max_wait: Duration,

    /// Longest a partial batch waits, right after a pass, for as many inputs as that pass
    /// answered plus those that waited through it (callers in a loop come straight back;
    /// starting without them splits them over two uneven passes). The grace is an eighth
    /// of the last pass, at most this; 0 turns it off.
    #[arg(long, env = "IHUB_WORKER_REFILL_GRACE", default_value = "10ms", value_parser = duration)]
    pub refill_grace: Duration,

    /// Most inputs waiting per model; beyond it calls fail at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IHUB_WORKER_MAX_WAITING", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_waiting: u32,

    /// Threads that compute on the CPU: the worker's own kernels (a rayon pool, threads
    /// named `compute-N`) and ONNX Runtime's intra-op pool. Default: the cores this process
    /// may use (its affinity and its cgroup's CPU quota, as a container's CPU limit sets
    /// it), where ONNX Runtime alone would take every physical core of the machine. During
    /// a forward pass of the worker's encoder, the pool's idle threads poll for the pass's
    /// next step rather than sleep (for at most a millisecond without work). Encoders of
    /// different models share the pool: their passes take turns, first come first served.
    #[arg(long, env = "IHUB_WORKER_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Pins the worker's compute threads (`compute-N`), each to a CPU of its own. `auto`:
    /// when there is exactly one per CPU the process may run on (its affinity mask), as
    /// the default thread count gives on a machine or container that is all the worker's;
    /// a pool smaller than that set (a CPU quota below the CPUs, a smaller `--threads`)
    /// stays free, so that two processes never pile onto the same CPUs. Left free, a
    /// pass's threads can share one CPU for tens of milliseconds while another idles.
    /// ONNX Runtime's pool is not pinned.
    #[arg(long, env = "IHUB_WORKER_PIN_THREADS", value_enum, default_value_t = PinThreads::Auto)]
    pub pin_threads: PinThreads,

    /// The instruction set the CPU encoder's kernels run on: `auto`, the widest this CPU
    /// has; or one it has, narrower — `avx2` on an AVX-512 host runs the kernels, and so
    /// gives the results, of the fleet's AVX2-only hosts, and is how the AVX2 path is
    /// measured on a host that has both. A worker asked for one its CPU lacks refuses to start.
    /// The ONNX Runtime and tensor (candle) engines choose their own.
    #[arg(long, env = "IHUB_WORKER_ISA", value_enum, default_value_t = InstructionSet::Auto)]
    pub isa: InstructionSet,

    /// Longest a model's forward pass may run. One that runs longer (a model that loops
    /// or hangs) answers its callers and the model's queue with UNAVAILABLE, turns the
    /// model's health (grpc.health.v1, service = its name) NOT_SERVING and refuses new
    /// inputs until that pass returns; other models keep serving.
    #[arg(long, env = "IHUB_WORKER_FORWARD_DEADLINE", default_value = "30s", value_parser = positive_duration)]
    pub forward_deadline: Duration,

    /// Largest prompt accepted by text models, in bytes (the gateway's
    /// IHUB_GATEWAY_MAX_PROMPT_BYTES caps what it forwards).
    #[arg(long, env = "IHUB_WORKER_MAX_PROMPT_BYTES", default_value_t = DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,

    /// On SIGTERM, longest wait for in-flight calls (and open health watches) to finish
    /// before the worker exits anyway.
    #[arg(long, env = "IHUB_WORKER_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// How often to print a CloudWatch Embedded Metric Format line with the in-flight and
    /// queued inputs (the autoscaling signal on ECS); 0 turns it off.
    #[arg(long, env = "IHUB_WORKER_EMF_INTERVAL", default_value = "0", value_parser = duration)]
    pub emf_interval: Duration,

    /// The `ServiceName` dimension of those EMF lines.
    #[arg(
        long,
        env = "IHUB_WORKER_SERVICE_NAME",
        default_value = "inferencehub-worker"
    )]
    pub service_name: String,

    /// Log format.
    #[arg(
        long,
        env = "IHUB_WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The edge's limits.
    pub fn edge_limits(&self) -> crate::tls::EdgeLimits {
        crate::tls::EdgeLimits {
            handshake_timeout: self.tls_handshake_timeout,
            max_connections: self.max_connections as usize,
            max_handshakes: self.max_handshakes as usize,
        }
    }

    /// Who may call what.
    pub fn client_names(&self) -> crate::tls::ClientNames {
        let clean = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        };
        crate::tls::ClientNames {
            full: clean(&self.tls_client_names),
            health: clean(&self.tls_health_names),
            admin: clean(&self.tls_admin_names),
            catalog: clean(&self.tls_catalog_names),
        }
    }

    /// The batching knobs.
    pub fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            max_batch_size: self.max_batch_size as usize,
            max_wait: self.max_wait,
            max_waiting: self.max_waiting as usize,
            forward_deadline: self.forward_deadline,
            refill_grace: self.refill_grace,
        }
    }
}

impl ServeArgs {
    /// `serve`'s settings from `flags` alone (tests, benchmarks): every other setting at
    /// its default, the process environment unread.
    pub fn from_flags<I: Into<std::ffi::OsString> + Clone>(
        flags: impl IntoIterator<Item = I>,
    ) -> Result<Self, clap::Error> {
        let args = ["inferencehub-worker".into(), "serve".into()]
            .into_iter()
            .chain(flags.into_iter().map(Into::into));
        let cli: Cli = settings::parse_vars(args.collect::<Vec<std::ffi::OsString>>(), &[])?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            _ => Err(Cli::command().error(clap::error::ErrorKind::InvalidSubcommand, "not serve")),
        }
    }
}

/// A size in bytes: a number with an optional unit (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB`).
fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a size such as 512MiB or 6GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let value = number * scale;
    if !value.is_finite() || value < 1.0 || value > u64::MAX as f64 {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(value as u64)
}

/// A duration of at least 1 ms.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

impl Cli {
    /// Parses the command line and the environment; exits with clap's message on bad
    /// input.
    pub fn read() -> Self {
        Self::parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_refuse_nonsense() {
        assert_eq!(bytes("512MiB"), Ok(512 << 20));
        assert_eq!(bytes("1.5 GiB"), Ok(3 << 29));
        assert_eq!(bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(bytes("4096"), Ok(4096));
        for bad in ["", "GiB", "0", "-1GiB", "1 TiB", "1e400", "6 gigs"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }
}
