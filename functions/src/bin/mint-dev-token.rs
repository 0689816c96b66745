//! `mint-dev-token`: signs a development JWT with the local key pair (created on first use
//! under `--keys-dir`, with its JWKS beside it for the functions' `IHUB_JWKS_FILE`).

use std::path::PathBuf;

use clap::Parser;
use inferencehub_functions::devkeys::{claims, ensure_dev_keys, parse_ttl};

/// Mints a development bearer token and prints it.
#[derive(Debug, Parser)]
#[command(name = "mint-dev-token", version, about)]
struct Args {
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
    /// Issuer (must match the functions' IHUB_JWT_ISSUER).
    #[arg(
        long,
        env = "IHUB_JWT_ISSUER",
        default_value = "https://inferencehub.local/dev"
    )]
    issuer: String,
    /// Audience (must match the functions' IHUB_JWT_AUDIENCE).
    #[arg(long, env = "IHUB_JWT_AUDIENCE", default_value = "inferencehub")]
    audience: String,
    /// Folder with dev-jwt.pem and dev-jwks.json (created when missing).
    #[arg(long, default_value = ".local/jwt")]
    keys_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
