//! `inferencehub-worker`: `serve` models over mutual-TLS gRPC; `predict`, `models`,
//! `health` and `probe` are its operator and container-health clients. Development
//! certificates come from `inferencehub-dev gen-certs` (tools/).

use std::io::IsTerminal;

use inferencehub_worker::config::{Cli, Command, LogFormat};
use inferencehub_worker::{client, server};

/// Logs on stderr; level from `RUST_LOG` (default `info`), colour only on a terminal.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, as a stream of unit events (never fires where there is no SIGHUP).
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(()).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP: no live TLS reload"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::read();
    match cli.command {
        Command::Predict(args) => client::predict(&args).await,
        Command::Models(args) => client::models(&args).await,
        Command::Health(args) => {
            if client::health(&args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Probe(args) => {
            if client::probe(&args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Serve(args) => {
            init_tracing(args.log_format);
            let mut worker = server::start(*args).await?;
            // A machine-readable line for scripts and tests that start the worker on port 0.
            println!(
                "inferencehub-worker listening grpc={} metrics={}",
                worker.grpc_addr, worker.metrics_addr
            );
            let mut reload = reload_signal();
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("shutdown signal: NOT_SERVING, draining");
                        break;
                    }
                    _ = worker.failed() => {
                        tracing::info!("models failed to load: NOT_SERVING, stopping");
                        break;
                    }
                    Some(()) = reload.recv() => match worker.reload_tls() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and client CA reloaded"),
                        Err(e) => tracing::error!(error = format!("{e:#}"), "SIGHUP: TLS reload failed; the old certificates stay in use"),
                    },
                }
            }
            // A worker that could not serve (a model it refused, say) exits non-zero, so a
            // container scheduler or a script sees the failure, with the reason as the last
            // log line rather than a backtrace.
            if let Err(e) = worker.stop().await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "stopped: the worker could not serve"
                );
                std::process::exit(1);
            }
            tracing::info!("stopped");
            Ok(())
        }
    }
}
