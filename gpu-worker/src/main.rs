//! `inferencehub-worker`: `serve` models over mutual-TLS gRPC, or `gen-certs` for development.

use clap::Parser;
use inferencehub_worker::config::{Cli, Command, LogFormat};
use inferencehub_worker::{certs, client, server};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IHUB_WORKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::GenCerts(args) => {
            let paths = certs::generate(&args.out)?;
            println!(
                "wrote {}, {}, {}, {}, {}",
                paths.ca.display(),
                paths.server_cert.display(),
                paths.server_key.display(),
                paths.client_cert.display(),
                paths.client_key.display()
            );
            Ok(())
        }
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
            let mut worker = server::start(args).await?;
            // A machine-readable line for scripts and tests that start the worker on port 0.
            println!(
                "inferencehub-worker listening grpc={} metrics={}",
                worker.grpc_addr, worker.metrics_addr
            );
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("shutdown signal: NOT_SERVING, draining"),
                e = worker.failed() => tracing::error!(error = %e, "stopping"),
            }
            worker.stop().await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
