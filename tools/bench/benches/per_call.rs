//! `make bench-per-call`: what one call costs beyond the worker's forward pass at batch 1.
//! The release worker serves `sentiment` (MiniLM, one short sentence a call); the project's
//! gRPC client calls it over mutual TLS on loopback, one call at a time, for three rounds.
//! Each answer carries its forward time (`compute_ms`); the last column is the median of
//! wall time less that: the transport, the tokenizer and the hand-offs to and from the
//! model thread.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{WorkerProcess, cpu_model, root};
use inferencehub_bench::load::{closed_loop, demo_inputs};

const ROUNDS: usize = 3;
const CALLS_PER_ROUND: u64 = 1_800;

#[tokio::main]
async fn main() {
    let model_dir = root().join("models/sentiment");
    assert!(model_dir.is_dir(), "run `make models` first");
    let inputs = demo_inputs("sentiment");
    let (_worker, grpc) = WorkerProcess::serve_one(&model_dir, "sentiment", &inputs[0]).await;
    let grpc = Arc::new(grpc);
    closed_loop(grpc.clone(), "sentiment", inputs.clone(), 1, 200).await;
    println!(
        "{}, {} cores; {ROUNDS} rounds of {CALLS_PER_ROUND} calls, 1 caller\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| round | calls | calls/s | p50 wall ms | p99 wall ms | p50 wall − forward ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for round in 1..=ROUNDS {
        let s = closed_loop(
            grpc.clone(),
            "sentiment",
            inputs.clone(),
            1,
            CALLS_PER_ROUND,
        )
        .await;
        assert_eq!(s.failed, 0, "{:?}", s.statuses);
        let overhead = s
            .p50_overhead_ms
            .expect("the worker's answers carry compute_ms");
        println!(
            "| {round} | {} | {:.1} | {:.2} | {:.2} | {overhead:.3} |",
            s.sent, s.rps, s.p50_ms, s.p99_ms
        );
    }
}
