//! `make bench-kernels`: the CPU encoder's dense products on every instruction set this CPU
//! runs, side by side in one process. A change to the product kernel is measured on the
//! machine at hand, which has one of AVX2 or AVX-512 as its best; this bench times both
//! paths there, so a change tuned on one is seen on the other before it lands (the weight
//! prefetch, tuned on an AVX2-only CPU, once cost the AVX-512 path 40 %).
//!
//! The dense products of MiniLM-L6's six layers (each: q/k/v 384 → 1152, output 384 → 384
//! with the residual, feed-forward 384 → 1536 with GELU and 1536 → 384 with the residual;
//! 42 MB of weights, so that small batches stream them from memory as the model does) on 1
//! to 1,024 rows of input, each instruction set in turn within a round, best of the rounds;
//! every path's output is first checked against the plain f64 reference. Threads: the
//! rayon pool's (`RAYON_NUM_THREADS`, by default every core).
//!
//! Writes the table to `target/bench-kernels.md` and a plot to `docs/bench-kernels.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;

use common::{calls_for, cpu_model, per_call, ratio_svg, root};
use inferencehub_worker::kernels::reference::{self, test_values as values};
use inferencehub_worker::kernels::{Epilogue, Isa, PackedMatrix, matmul};

const HIDDEN: usize = 384;
const INTERMEDIATE: usize = 1536;
const ROWS: [usize; 6] = [1, 6, 12, 24, 128, 1024];
const ROUNDS: usize = 5;
/// Layers, each with weights of its own (MiniLM-L6's six).
const LAYERS: usize = 6;

/// One layer's products, packed for one instruction set.
struct Layer {
    isa: Isa,
    qkv: PackedMatrix,
    out: PackedMatrix,
    ff1: PackedMatrix,
    ff2: PackedMatrix,
}

/// Weights `[k, n]` and bias, the same for every instruction set.
struct Weights {
    shapes: [(usize, usize); 4],
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
}

impl Weights {
    fn new(layer: u64) -> Self {
        let shapes = [
            (HIDDEN, 3 * HIDDEN),
            (HIDDEN, HIDDEN),
            (HIDDEN, INTERMEDIATE),
            (INTERMEDIATE, HIDDEN),
        ];
        let w = shapes
            .iter()
            .enumerate()
            .map(|(i, &(k, n))| values(k * n, 10 * layer + i as u64, 0.05))
            .collect();
        let b = shapes
            .iter()
            .enumerate()
            .map(|(i, &(_, n))| values(n, 10 * layer + 5 + i as u64, 0.1))
            .collect();
        Self { shapes, w, b }
    }

    fn flops_per_row(&self) -> f64 {
        self.shapes.iter().map(|&(k, n)| 2.0 * (k * n) as f64).sum()
    }

    fn packed(&self, isa: Isa) -> Layer {
        let pack = |i: usize| {
            let (k, n) = self.shapes[i];
            PackedMatrix::new(isa, &self.w[i], k, n, &self.b[i])
        };
        Layer {
            isa,
            qkv: pack(0),
            out: pack(1),
            ff1: pack(2),
            ff2: pack(3),
        }
    }
}

/// Buffers for `rows` rows of one layer.
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    x1: Vec<f32>,
    inner: Vec<f32>,
    y: Vec<f32>,
}

impl Buffers {
    fn new(rows: usize) -> Self {
        Self {
            x: values(rows * HIDDEN, 1, 1.0),
            qkv: vec![0.0; rows * 3 * HIDDEN],
            x1: vec![0.0; rows * HIDDEN],
            inner: vec![0.0; rows * INTERMEDIATE],
            y: vec![0.0; rows * HIDDEN],
        }
    }
}

/// The four products in the encoder's order (the output projection reads the input rows
/// as its "context", which costs what the attention's output would).
fn layer(l: &Layer, b: &mut Buffers) {
    matmul(l.isa, &mut b.qkv, &b.x, &l.qkv, Epilogue::Bias);
    matmul(l.isa, &mut b.x1, &b.x, &l.out, Epilogue::BiasResidual(&b.x));
    matmul(l.isa, &mut b.inner, &b.x1, &l.ff1, Epilogue::BiasGelu);
    matmul(
        l.isa,
        &mut b.y,
        &b.inner,
        &l.ff2,
        Epilogue::BiasResidual(&b.x1),
    );
}

/// The layer's output on `rows` rows of `isa` against the f64 reference: the largest
/// difference relative to the largest value.
fn check(weights: &Weights, l: &Layer, rows: usize) -> f64 {
    let mut b = Buffers::new(rows);
    layer(l, &mut b);
    let dense = |i: usize, a: &[f32]| {
        reference::dense(a, &weights.w[i], weights.shapes[i].0, &weights.b[i])
    };
    let x1: Vec<f32> = dense(1, &b.x)
        .iter()
        .zip(&b.x)
        .map(|(&v, &r)| (v + f64::from(r)) as f32)
        .collect();
    let inner: Vec<f32> = dense(2, &x1)
        .iter()
        .map(|&v| reference::gelu(v) as f32)
        .collect();
    let want: Vec<f64> = dense(3, &inner)
        .iter()
        .zip(&x1)
        .map(|(&v, &r)| v + f64::from(r))
        .collect();
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst =
        b.y.iter()
            .zip(&want)
            .fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs()));
    worst / scale
}

fn main() {
    let isas = Isa::all();
    let isas: Vec<Isa> = isas.into_iter().filter(|i| i.name() != "scalar").collect();
    assert!(!isas.is_empty(), "no vector instruction set on this CPU");
    let weights: Vec<Weights> = (1..=LAYERS as u64).map(Weights::new).collect();
    // models[isa][layer]
    let models: Vec<Vec<Layer>> = isas
        .iter()
        .map(|&isa| weights.iter().map(|w| w.packed(isa)).collect())
        .collect();
    for model in &models {
        for rows in [1, 13, 300] {
            let worst = check(&weights[0], &model[0], rows);
            assert!(
                worst < 1e-5,
                "{} on {rows} rows differs from the reference by {worst:e}",
                model[0].isa.name()
            );
        }
    }
    let threads = rayon::current_num_threads();
    let cpu = cpu_model();
    eprintln!(
        "checked {} against the f64 reference; timing on {threads} threads ({cpu})",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    );
    let pass = |model: &[Layer], buffers: &mut Buffers| {
        for l in model {
            layer(l, buffers);
        }
    };
    // gflops[row][isa]
    let mut gflops = vec![vec![0f64; models.len()]; ROWS.len()];
    for (i, &rows) in ROWS.iter().enumerate() {
        eprintln!("[{}/{}] {rows} rows", i + 1, ROWS.len());
        let mut buffers = Buffers::new(rows);
        let flops = weights[0].flops_per_row() * (rows * LAYERS) as f64;
        // Calls for ~0.25 s a sample, from the first path's warm-up call.
        let calls = calls_for(0.25, 3, 5_000, || pass(&models[0], &mut buffers));
        for _ in 0..ROUNDS {
            for (j, model) in models.iter().enumerate() {
                pass(model, &mut buffers);
                let s = per_call(calls, || pass(model, &mut buffers));
                gflops[i][j] = gflops[i][j].max(flops / s / 1e9);
            }
        }
    }
    let names: Vec<&str> = models.iter().map(|m| m[0].isa.name()).collect();
    let mut table = format!(
        "MiniLM-L6's dense products (six layers, 42 MB of weights), GFLOP/s, best of {ROUNDS} interleaved rounds; {threads} threads; {cpu}\n\n| rows |"
    );
    for n in &names {
        let _ = write!(table, " {n} |");
    }
    if names.len() == 2 {
        let _ = write!(table, " {} / {} |", names[1], names[0]);
    }
    table += "\n|---:|";
    table += &"---:|".repeat(names.len() + usize::from(names.len() == 2));
    table += "\n";
    for (i, rows) in ROWS.iter().enumerate() {
        let _ = write!(table, "| {rows} |");
        for g in &gflops[i] {
            let _ = write!(table, " {g:.1} |");
        }
        if names.len() == 2 {
            let _ = write!(table, " {:.2} |", gflops[i][1] / gflops[i][0]);
        }
        table += "\n";
    }
    println!("\n{table}");
    let groups: Vec<(String, Vec<f64>)> = ROWS
        .iter()
        .zip(&gflops)
        .map(|(rows, g)| (format!("{rows} rows"), g.iter().map(|v| v / g[0]).collect()))
        .collect();
    let colours = ["#a0aec0", "#2b6cb0"];
    let series: Vec<(&str, &str)> = names.iter().copied().zip(colours).collect();
    let title = format!(
        "Dense products per instruction set, relative to the {} path (same run; higher is better)",
        names[0]
    );
    let svg = ratio_svg(&title, &groups, &series);
    let md = root().join("target/bench-kernels.md");
    let plot = root().join("docs/bench-kernels.svg");
    std::fs::write(&md, &table).unwrap();
    std::fs::write(&plot, svg).unwrap();
    println!("wrote {} and {}", md.display(), plot.display());
}
