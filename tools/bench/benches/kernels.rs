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
//! rayon pool's (`RAYON_NUM_THREADS`, by default every core); each pass runs inside
//! [`kernels::pass`], as in the worker.
//!
//! Under the table, the FMA peak of the same threads on each path, measured with no memory
//! touched, and the share of it the products reach at 128 and 1,024 rows: what a change to
//! the tiles can still win on the machine at hand (a Zen 4 core does one AVX-512 FMA a cycle,
//! a Sapphire Rapids core two).
//!
//! Then one layer's self-attention ([`kernels::attention`], MiniLM's 12 heads of 32) at 1, 8
//! and 32 sequences of 128 tokens and 32 of 12, each path checked against the f64 reference
//! first (`IHUB_BENCH_KERNELS=attention`: that table alone).
//!
//! Writes the tables to `target/bench-kernels.md` and a plot of the products to
//! `docs/bench-kernels.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::fmt::Write as _;

use common::{calls_for, cpu_model, per_call, ratio_svg, root};
use inferencehub_worker::kernels;
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
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            // A NaN is the worst error (`f64::max` would skip it).
            .map(|e| if e.is_nan() { f64::INFINITY } else { e })
            .fold(0f64, f64::max);
    worst / scale
}

/// The attention shapes timed: (label, sequences, tokens each); MiniLM's 12 heads of 32.
const ATTENTION: [(&str, usize, usize); 4] = [
    ("1 x 128", 1, 128),
    ("8 x 128", 8, 128),
    ("32 x 128", 32, 128),
    ("32 x 12", 32, 12),
];
const HEADS: usize = 12;

/// One layer's self-attention ([`kernels::attention`]) on each shape of [`ATTENTION`], each
/// instruction set in turn within a round, best of [`ROUNDS`]: µs a call, and GFLOP/s
/// counting the two products (4 · tokens² · hidden a sequence). Every path's output is
/// first checked against the f64 reference.
fn attention_table(isas: &[Isa], names: &[&str], threads: usize) -> String {
    let mut table = format!(
        "\nOne layer's self-attention (12 heads of 32), µs a call (GFLOP/s of its two products), best of {ROUNDS} interleaved rounds; {threads} threads\n\n| sequences x tokens |"
    );
    for n in names {
        let _ = write!(table, " {n} |");
    }
    table += "\n|---|";
    table += &"---:|".repeat(names.len());
    table += "\n";
    for (label, sequences, tokens) in ATTENTION {
        let offsets: Vec<usize> = (0..=sequences).map(|s| s * tokens).collect();
        let rows = sequences * tokens;
        let qkv = values(rows * 3 * HIDDEN, 7, 2.0);
        let want = reference::attention(&qkv, &offsets, HEADS);
        let mut context = vec![0f32; rows * HIDDEN];
        for &isa in isas {
            context.fill(f32::NAN);
            kernels::attention(isa, &mut context, &qkv, &offsets, HEADS);
            // The context starts as NaN: a row the kernel leaves unwritten fails.
            let worst = inferencehub_devkit::largest_error(
                context.iter().zip(&want).map(|(g, w)| (g - w).abs()),
            );
            assert!(worst < 1e-5, "{} attention off by {worst:e}", isa.name());
        }
        let flops = (4 * sequences * tokens * tokens * HIDDEN) as f64;
        let calls = calls_for(0.1, 3, 5_000, || {
            kernels::pass(|| kernels::attention(isas[0], &mut context, &qkv, &offsets, HEADS))
        });
        let mut best = vec![f64::INFINITY; isas.len()];
        for _ in 0..ROUNDS {
            for (j, &isa) in isas.iter().enumerate() {
                let s = per_call(calls, || {
                    kernels::pass(|| kernels::attention(isa, &mut context, &qkv, &offsets, HEADS))
                });
                best[j] = best[j].min(s);
            }
        }
        let _ = write!(table, "| {label} |");
        for s in best {
            let _ = write!(table, " {:.0} ({:.1}) |", s * 1e6, flops / s / 1e9);
        }
        table += "\n";
    }
    table += "\n(A sequence of at most 16 tokens runs on the AVX2 kernels under AVX-512: its keys fill one AVX2 panel.)\n";
    table
}

/// Independent FMA chains in the peak probe: enough to cover the FMA latency on every core
/// the bench meets (4 cycles, two FMAs a cycle on AVX2 and on Sapphire Rapids' AVX-512), few
/// enough that they stay in AVX2's sixteen registers with the two operands.
const PEAK_CHAINS: usize = 12;

/// The peak probe: `steps` rounds of one FMA on each of [`PEAK_CHAINS`] accumulators, no
/// memory touched. Its rate is the most the core's FMA units give on this instruction set at
/// the clock they run at under that load, which is what a product tile can approach.
struct FmaPeak {
    steps: usize,
    a: f32,
    b: f32,
}

impl kernels::pulp::WithSimd for FmaPeak {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: kernels::pulp::Simd>(self, simd: S) -> f32 {
        let (a, b) = (simd.splat_f32s(self.a), simd.splat_f32s(self.b));
        let mut acc = [simd.splat_f32s(0.0); PEAK_CHAINS];
        for _ in 0..self.steps {
            for x in &mut acc {
                *x = simd.mul_add_f32s(*x, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(simd.splat_f32s(0.0), |s, &x| simd.add_f32s(s, x));
        simd.reduce_sum_f32s(sum)
    }
}

/// GFLOP/s of [`FmaPeak`] on every pool thread at once (the threads the products use), best
/// of five rounds of about 40 ms (a round of 10 ms once read half the peak on one path).
fn fma_peak(isa: Isa) -> f64 {
    let steps = 200_000_000 / isa.lanes();
    let flops_per_thread = (2 * PEAK_CHAINS * isa.lanes() * steps) as f64;
    (0..5)
        .map(|_| {
            let seconds: Vec<f64> = rayon::broadcast(|_| {
                let started = std::time::Instant::now();
                let a = std::hint::black_box(0.999_999_f32);
                let b = std::hint::black_box(1e-7_f32);
                std::hint::black_box(isa.run(FmaPeak { steps, a, b }));
                started.elapsed().as_secs_f64()
            });
            seconds
                .iter()
                .map(|s| flops_per_thread / s / 1e9)
                .sum::<f64>()
        })
        .fold(0f64, f64::max)
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
    let names: Vec<&str> = isas.iter().map(|i| i.name()).collect();
    // IHUB_BENCH_KERNELS=attention: the attention table alone (a quick check while working
    // on it).
    if std::env::var("IHUB_BENCH_KERNELS").as_deref() == Ok("attention") {
        println!("{}", attention_table(&isas, &names, threads));
        return;
    }
    eprintln!(
        "checked {} against the f64 reference; timing on {threads} threads ({cpu})",
        names.join(", ")
    );
    // Inside `kernels::pass`, as the worker runs a model: each product's tasks start on the
    // pool's threads at once. Called from this thread, outside the pool, every product
    // handed its tasks to the pool and waited for them (24 hand-offs a pass, tens of
    // microseconds each on a virtual machine), which a batch of a few rows felt most.
    let pass = |model: &[Layer], buffers: &mut Buffers| {
        kernels::pass(|| {
            for l in model {
                layer(l, buffers);
            }
        });
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
    // The share of the FMA units' measured peak the products reach: on a core with one
    // AVX-512 FMA a cycle (Zen 4) both paths share one peak; with two (Sapphire Rapids) the
    // AVX-512 one is twice AVX2's.
    let peaks: Vec<f64> = isas.iter().map(|&isa| fma_peak(isa)).collect();
    let peak_list: Vec<String> = names
        .iter()
        .zip(&peaks)
        .map(|(name, peak)| format!("{name} {peak:.1} GFLOP/s"))
        .collect();
    let share_list: Vec<String> = ROWS
        .iter()
        .zip(&gflops)
        .skip(ROWS.len() - 2)
        .map(|(rows, g)| {
            let shares: Vec<String> = names
                .iter()
                .zip(g.iter().zip(&peaks))
                .map(|(name, (g, p))| format!("{name} {:.0} %", 100.0 * g / p))
                .collect();
            format!("{rows} rows: {}", shares.join(", "))
        })
        .collect();
    let _ = writeln!(
        table,
        "\nFMA peak measured on {threads} threads (no memory touched): {}. The products' share of it at {}.",
        peak_list.join("; "),
        share_list.join("; ")
    );
    table += &attention_table(&isas, &names, threads);
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
