//! `inferencehub-bench`: measurements (`make bench-*`, the chaos, soak and load scripts, and
//! the GPU check, which carries this binary). Nothing here ships.

use clap::{Parser, Subcommand};
use inferencehub_bench::{cold_start, load, measure};

/// InferenceHub measurement tooling.
#[derive(Debug, Parser)]
#[command(name = "inferencehub-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Answer a file of inputs with one model, as JSON lines (CPU vs GPU checks).
    Classify(measure::ClassifyArgs),
    /// Time (and profile) a text encoder's forward pass, driven over stdin (the GPU check).
    BenchEncoder(measure::BenchEncoderArgs),
    /// Send load to the gateway (HTTP) or a worker (gRPC) and print requests, failures,
    /// latency and batch sizes.
    Load(Box<load::LoadArgs>),
    /// Start a Lambda function binary against a minimal runtime API, at the CPU share of
    /// each memory size, and print its time to ready and to the first answer.
    ColdStart(Box<cold_start::ColdStartArgs>),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Classify(args) => measure::classify(&args),
        Command::BenchEncoder(args) => measure::bench_encoder(&args),
        Command::Load(args) => load::run(*args).await,
        Command::ColdStart(args) => cold_start::run(*args).await,
    }
}
