//! `create-local-table`: creates the rate-limit table (same key schema and TTL as
//! `template.yaml`) on a local DynamoDB-compatible server and waits until it is ACTIVE.

use std::time::Duration;

use clap::Parser;
use inferencehub_functions::ratelimit::{ensure_table, local_client};

/// Creates the rate-limit table on a local DynamoDB endpoint (LocalStack or dynalite).
#[derive(Debug, Parser)]
#[command(name = "create-local-table", version, about)]
struct Args {
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
        env = "IHUB_RATE_LIMIT_TABLE",
        default_value = "inferencehub-rate-limits"
    )]
    table: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_table(
        &local_client(&args.endpoint, Duration::from_secs(5)),
        &args.table,
    )
    .await?;
    println!("table {} is ACTIVE at {}", args.table, args.endpoint);
    Ok(())
}
