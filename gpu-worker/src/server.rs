//! Starting and stopping a worker: bind, serve health and gRPC over mutual TLS at once,
//! load and warm up the models in the background, flip health to SERVING, and on stop
//! flip it back, finish what is in flight and return.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use inferencehub_proto::pb::model_inference_server::ModelInferenceServer;
use inferencehub_proto::pb::model_repository_server::ModelRepositoryServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::AdminService;
use crate::config::ModelControl;
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::models::{LoadOptions, device::parse_device};
use crate::registry::{Control, Failures, Registry};
use crate::service::{InferenceService, ModelStore};
use crate::tls::{Acceptor, TlsSources};

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Models are loading; health says NOT_SERVING.
    Loading,
    /// Every model loaded and warmed up; health says SERVING.
    Serving,
    /// Loading failed; the worker stops.
    Failed(String),
}

/// A worker that is accepting connections.
pub struct RunningWorker {
    /// Bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// Bound metrics address.
    pub metrics_addr: SocketAddr,
    state: watch::Receiver<WorkerState>,
    stop: watch::Sender<bool>,
    serving: Arc<AtomicBool>,
    health: HealthReporter,
    server: JoinHandle<anyhow::Result<()>>,
    drain_timeout: std::time::Duration,
    acceptor: Arc<Acceptor>,
}

type Service = ModelInferenceServer<InferenceService>;

impl RunningWorker {
    /// Waits until the models are served, or loading failed.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let state = self
            .state
            .wait_for(|s| *s != WorkerState::Loading)
            .await
            .context("worker stopped while loading")?
            .clone();
        match state {
            WorkerState::Failed(e) => anyhow::bail!(e),
            _ => Ok(()),
        }
    }

    /// Resolves when loading has failed (never, if it succeeds).
    pub async fn failed(&mut self) -> String {
        match self
            .state
            .wait_for(|s| matches!(s, WorkerState::Failed(_)))
            .await
        {
            Ok(state) => match &*state {
                WorkerState::Failed(e) => e.clone(),
                _ => String::new(),
            },
            Err(_) => std::future::pending().await,
        }
    }

    /// Re-reads the TLS certificate, key and client CA (on SIGHUP): new connections use
    /// them, established ones carry on. On error the old material stays in use.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        self.acceptor.reload()
    }

    /// Turns health to NOT_SERVING, stops accepting, finishes in-flight calls, returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        set_health(&self.health, ServingStatus::NotServing).await;
        self.serving.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
        match tokio::time::timeout(self.drain_timeout, self.server).await {
            Ok(finished) => finished.context("server task")??,
            Err(_) => tracing::warn!(
                timeout_secs = self.drain_timeout.as_secs(),
                "drain timeout: closing the connections still open"
            ),
        }
        match &*self.state.borrow() {
            WorkerState::Failed(e) => anyhow::bail!("model loading failed: {e}"),
            _ => Ok(()),
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(<Service as tonic::server::NamedService>::NAME, status)
        .await;
}

/// How often each model's own health is brought up to date.
const MODEL_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Each served model's own health (grpc.health.v1 with the model's name as the service):
/// SERVING while its default version answers, NOT_SERVING while a forward pass of that
/// version has run past `--forward-deadline`; a model no longer served is cleared (its
/// check answers NOT_FOUND). The worker's overall health is not touched: its other models
/// serve.
async fn model_health(models: Arc<ModelStore>, mut health: HealthReporter) {
    let mut shown = std::collections::BTreeMap::<String, ServingStatus>::new();
    let mut tick = tokio::time::interval(MODEL_HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = models.get() else {
            continue;
        };
        for (name, served) in set.iter() {
            let status = if served.default.batcher.is_stuck() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            };
            if shown.get(name) != Some(&status) {
                if status == ServingStatus::NotServing {
                    tracing::error!(model = %name, "model NOT_SERVING: a forward pass ran past --forward-deadline");
                } else if shown.contains_key(name) {
                    tracing::warn!(model = %name, "model SERVING again");
                }
                health.set_service_status(name, status).await;
                shown.insert(name.clone(), status);
            }
        }
        let gone: Vec<String> = shown
            .keys()
            .filter(|name| !set.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            health.clear_service_status(&name).await;
            shown.remove(&name);
        }
    }
}

/// Binds both listeners and starts serving; models load in the background.
pub async fn start(args: ServeArgs) -> anyhow::Result<RunningWorker> {
    let acceptor = Arc::new(Acceptor::new(
        TlsSources {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.tls_client_ca.clone(),
            client_crl: args.tls_client_crl.clone(),
        },
        args.client_names(),
    )?);
    let device = parse_device(&args.device)?;
    compute_threads(args.threads, args.pin_threads.into());
    let isa = args.isa.apply()?;
    tracing::info!(instruction_set = %isa.name(), "CPU encoder kernels");
    let drain_timeout = args.drain_timeout;
    let metrics = Arc::new(Metrics::new()?);

    let listener = bind(args.listen, "gRPC").await?;
    let grpc_addr = listener.local_addr()?;
    let metrics_listener = bind(args.metrics_listen, "metrics").await?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let models: Arc<ModelStore> = Arc::new(ModelStore::default());
    let admin_control = Arc::new(std::sync::OnceLock::new());
    let admin = AdminService::new(
        models.clone(),
        admin_control.clone(),
        args.model_control == ModelControl::Explicit,
    );
    let service = InferenceService::new(models.clone(), metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(WorkerState::Loading);

    let until_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .max_concurrent_streams(Some(args.max_concurrent_streams))
        // No grace: with one, tonic sends no GOAWAY at the age and cuts the connection at
        // age + grace instead; without, the calls in flight (unary, with deadlines) finish.
        .max_connection_age(args.max_connection_age)
        .add_service(health_service)
        .add_service(ModelInferenceServer::with_interceptor(
            service,
            crate::tls::require_inference_role,
        ))
        .add_service(ModelRepositoryServer::with_interceptor(
            admin,
            crate::tls::require_admin_role,
        ))
        .serve_with_incoming_shutdown(
            crate::tls::incoming(
                listener,
                acceptor.clone(),
                args.edge_limits(),
                metrics.clone(),
            ),
            until_stop(stop_rx.clone()),
        );
    let serving = Arc::new(AtomicBool::new(false));
    let metrics_server = crate::metrics::serve(
        metrics_listener,
        metrics.clone(),
        serving.clone(),
        until_stop(stop_rx),
    );
    let server = tokio::spawn(async move {
        let (grpc, metrics) = tokio::join!(grpc, metrics_server);
        grpc.context("gRPC server")?;
        metrics.context("metrics server")?;
        Ok(())
    });

    if !args.emf_interval.is_zero() {
        tokio::spawn(crate::metrics::emit_emf(
            metrics.clone(),
            args.emf_interval,
            args.service_name.clone(),
        ));
    }
    let loader_health = health.clone();
    let loader_serving = serving.clone();
    let loader_stop = stop_tx.clone();
    tokio::spawn(async move {
        // With `none` nothing would ever change what is served, so any failure stops the
        // worker; with `poll` and `explicit` a failed version is listed UNAVAILABLE and the
        // rest serve.
        let loaded = match registry(&args, device, &metrics).await {
            Ok(registry) if args.model_control == ModelControl::None => registry
                .load_all()
                .await
                .map(|loaded| (registry, loaded, Failures::new())),
            Ok(registry) => {
                let mut failed = Failures::new();
                registry
                    .refresh(&[], &mut failed, None, &Default::default())
                    .await
                    .map(|loaded| (registry, loaded, failed))
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok((registry, loaded, failed)) => {
                let control = Arc::new(Control::new(registry, models.clone(), loaded, failed));
                let _ = admin_control.set(control.clone());
                let names: Vec<_> = models
                    .get()
                    .map(|set| set.keys().cloned().collect())
                    .unwrap_or_default();
                // The HTTP mirror first: whoever sees SERVING over gRPC finds /healthz 200.
                loader_serving.store(true, Ordering::SeqCst);
                set_health(&loader_health, ServingStatus::Serving).await;
                tokio::spawn(model_health(models.clone(), loader_health.clone()));
                tracing::info!(models = ?names, "all models loaded and warmed up; SERVING");
                let _ = state_tx.send(WorkerState::Serving);
                if args.model_control == ModelControl::Poll {
                    crate::registry::poll(control, args.poll_interval).await;
                }
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "model loading failed");
                let _ = state_tx.send(WorkerState::Failed(format!("{e:#}")));
                let _ = loader_stop.send(true);
            }
        }
    });

    Ok(RunningWorker {
        grpc_addr,
        metrics_addr,
        state: state_rx,
        stop: stop_tx,
        serving,
        health,
        server,
        drain_timeout,
        acceptor,
    })
}

/// How long a listener keeps trying an address that is in use.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `addr`, trying again for [`BIND_RETRY`] while it is in use. A client that dials a
/// loopback port in the ephemeral range before its server listens (the gateway, while the
/// local stack starts or a chaos test restarts a worker) can be given that very port as
/// its own source, a TCP self-connection that holds the port until the client gives up a
/// moment later. An address another server holds still fails, after the retries.
async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    let mut warned = false;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(%addr, "{what} address in use: trying again for up to 10 s");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {what} on {addr}")),
        }
    }
}

/// Sizes the CPU pools: the worker's rayon pool and ONNX Runtime's intra-op pool get
/// `threads`, or the cores this process may use; the rayon pool's threads pinned as
/// `pinning` says.
fn compute_threads(threads: Option<u32>, pinning: crate::kernels::Pinning) {
    let cores = crate::models::device::cores();
    let threads = threads.map_or(cores, |t| t as usize);
    match crate::kernels::build_compute_pool(threads, pinning) {
        Ok(cpus) if cpus.is_empty() => tracing::info!(threads, cores, "compute threads"),
        Ok(cpus) => tracing::info!(threads, cores, ?cpus, "compute threads, pinned to CPUs"),
        // A second worker in one process (tests) finds the pool made: it keeps that size.
        Err(e) => tracing::debug!(error = %e, "the compute pool already exists"),
    }
    crate::models::onnx::runtime::use_threads(threads);
}

/// The registry of the repository `args` names, with the worker's load options.
async fn registry(
    args: &ServeArgs,
    device: candle_core::Device,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Registry> {
    if let Some(library) = &args.onnxruntime {
        crate::models::onnx::runtime::use_library(library.clone());
    }
    let dtype = crate::models::device::parse_dtype(args.dtype.as_deref(), &device)?;
    tracing::info!(?device, ?dtype, "loading models");
    let opts = LoadOptions {
        device,
        dtype,
        max_prompt_bytes: args.max_prompt_bytes,
    };
    Registry::new(
        &args.model_dir,
        opts,
        args.batch_config(),
        metrics.clone(),
        args.memory_budget,
    )
    .await
    .with_context(|| format!("model repository {}", args.model_dir))
}
