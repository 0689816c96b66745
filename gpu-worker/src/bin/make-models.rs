//! `inferencehub-make-models`: trains the demo models (`make models` runs it).

use std::path::PathBuf;

use clap::Parser;
use inferencehub_worker::training::{Report, train_iris, train_sentiment};

/// Builds the demo models `sentiment` and `iris` deterministically.
#[derive(Debug, Parser)]
#[command(name = "inferencehub-make-models", version, about)]
struct Args {
    /// Folder with the all-MiniLM-L6-v2 config.json, tokenizer.json and model.safetensors.
    #[arg(long)]
    encoder_dir: PathBuf,
    /// Folder with sentiment.tsv and iris.csv.
    #[arg(long, default_value = "gpu-worker/data")]
    data_dir: PathBuf,
    /// Model folder to write `sentiment/` and `iris/` into.
    #[arg(long, default_value = "models")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
