//! `inferencehub-dev`: the development commands (`make models`, `make dev` and the tests
//! call them). Nothing here ships.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use inferencehub_devkit::dynamo::{ensure_table, local_client};
use inferencehub_devkit::keys::{claims, ensure_dev_keys, parse_ttl};
use inferencehub_functions::app::App;
use inferencehub_functions::config::{PredictConfig, from_env};
use inferencehub_functions::routes::{Health, Models, Predict};
use inferencehub_tools::training::{Report, train_iris, train_sentiment};

/// InferenceHub development tooling.
#[derive(Debug, Parser)]
#[command(name = "inferencehub-dev", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the demo models `sentiment` and `iris` deterministically (`make models`).
    MakeModels(MakeModels),
    /// Write a development CA, a server certificate for localhost and a client certificate.
    GenCerts(GenCerts),
    /// Mint a development bearer token (creating the dev signing key on first use).
    MintToken(MintToken),
    /// Create the rate-limit table on a local DynamoDB-compatible server.
    CreateTable(CreateTable),
    /// Serve the three functions over plain HTTP on one port, configured from the same
    /// environment variables as the Lambda functions (no `cargo lambda` needed).
    Gateway(Gateway),
}

#[derive(Debug, Args)]
struct MakeModels {
    /// Folder with the all-MiniLM-L6-v2 config.json, tokenizer.json and model.safetensors.
    #[arg(long)]
    encoder_dir: PathBuf,
    /// Folder with sentiment.tsv and iris.csv.
    #[arg(long, default_value = "tools/data")]
    data_dir: PathBuf,
    /// Model folder to write `sentiment/` and `iris/` into.
    #[arg(long, default_value = "models")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct GenCerts {
    /// Folder to write ca.pem, server.pem, server.key, client.pem and client.key into.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct MintToken {
    /// Subject (the caller rate limits count against).
    #[arg(long, default_value = "dev-user")]
    sub: String,
    /// Space-separated scopes, e.g. "predict" or "predict model:iris".
    #[arg(long, default_value = "predict")]
    scope: String,
    /// Lifetime: 90s, 15m, 1h, 2d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Rate-limit tier claim.
    #[arg(long)]
    tier: Option<String>,
    /// Issuer (must match the functions' IHUB_GATEWAY_JWT_ISSUER).
    #[arg(
        long,
        env = "IHUB_GATEWAY_JWT_ISSUER",
        default_value = "https://inferencehub.local/dev"
    )]
    issuer: String,
    /// Audience (must match the functions' IHUB_GATEWAY_JWT_AUDIENCE).
    #[arg(
        long,
        env = "IHUB_GATEWAY_JWT_AUDIENCE",
        default_value = "inferencehub"
    )]
    audience: String,
    /// Folder with dev-jwt.pem and dev-jwks.json (created when missing).
    #[arg(long, default_value = ".local/jwt")]
    keys_dir: PathBuf,
}

#[derive(Debug, Args)]
struct CreateTable {
    /// DynamoDB endpoint.
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL_DYNAMODB",
        default_value = "http://127.0.0.1:4566"
    )]
    endpoint: String,
    /// Table name.
    #[arg(
        long,
        env = "IHUB_GATEWAY_RATE_LIMIT_TABLE",
        default_value = "inferencehub-rate-limits"
    )]
    table: String,
}

#[derive(Debug, Args)]
struct Gateway {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

fn make_models(args: MakeModels) -> anyhow::Result<()> {
    let reports: Vec<Report> = vec![
        train_sentiment(
            &args.encoder_dir,
            &args.data_dir.join("sentiment.tsv"),
            &args.out.join("sentiment"),
        )?,
        train_iris(&args.data_dir.join("iris.csv"), &args.out.join("iris"))?,
    ];
    println!(
        "{:<10} {:>6} {:>9} {:>10} {:>9}",
        "model", "train", "held-out", "train acc", "held-out acc"
    );
    for r in &reports {
        println!(
            "{:<10} {:>6} {:>9} {:>9.1}% {:>11.1}%",
            r.model,
            r.train_examples,
            r.test_examples,
            r.train_accuracy * 100.0,
            r.test_accuracy * 100.0
        );
    }
    Ok(())
}

async fn gateway(args: Gateway) -> anyhow::Result<()> {
    inferencehub_functions::runtime::init_tracing();
    // One configuration for all three: the predict function's is the superset.
    let config: PredictConfig = from_env()?;
    let catalog_ttl = config.api.catalog_ttl;
    // One worker client and one authenticator serve all three handlers.
    let predict = Predict::connect(config).await?;
    let worker = predict.worker.clone();
    let app = App {
        models: Models {
            auth: predict.auth.clone(),
            worker: worker.clone(),
            catalog: inferencehub_functions::catalog::Catalog::new(catalog_ttl),
        },
        health: Health { worker },
        predict,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "inferencehub-dev gateway listening on http://{}",
        listener.local_addr()?
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    inferencehub_tools::gateway::serve(listener, Arc::new(app), shutdown).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::MakeModels(args) => make_models(args),
        Command::GenCerts(args) => {
            let paths = inferencehub_devkit::certs::generate(&args.out)?;
            println!(
                "wrote {}, {}, {}, {}, {}, {}, {}",
                paths.ca.display(),
                paths.server_cert.display(),
                paths.server_key.display(),
                paths.client_cert.display(),
                paths.client_key.display(),
                paths.health_cert.display(),
                paths.health_key.display()
            );
            Ok(())
        }
        Command::MintToken(args) => {
            let key = ensure_dev_keys(&args.keys_dir)?;
            let ttl = parse_ttl(&args.ttl)?;
            let token = key.sign(&claims(
                &args.issuer,
                &args.audience,
                &args.sub,
                &args.scope,
                ttl,
                args.tier.as_deref(),
            ))?;
            println!("{token}");
            Ok(())
        }
        Command::CreateTable(args) => {
            ensure_table(
                &local_client(&args.endpoint, Duration::from_secs(5)),
                &args.table,
            )
            .await?;
            println!("table {} is ACTIVE at {}", args.table, args.endpoint);
            Ok(())
        }
        Command::Gateway(args) => gateway(args).await,
    }
}
