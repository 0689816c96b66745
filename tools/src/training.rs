//! Trains the demo models deterministically with Candle (used by `make models`):
//! - `sentiment`: all-MiniLM-L6-v2 sentence embeddings (mean pooled, normalised) and a
//!   logistic-regression head trained on `data/sentiment.tsv`;
//! - `iris`: an MLP with stored input normalisation trained on `data/iris.csv`.
//!
//! Every fifth example (index % 5 == 4) is held out; accuracies on both splits are
//! returned so the command can print them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, loss};

use inferencehub_worker::models::ModelInput;
use inferencehub_worker::models::bert::encoder::load_body;
use inferencehub_worker::models::bert::sentence::{HEAD_FILE, HEAD_METADATA_KEY, HeadConfig};
use inferencehub_worker::models::model::prepare_input;
use inferencehub_worker::models::tabular::{CONFIG_FILE, MlpClassifier, TabularConfig};
use inferencehub_worker::models::tokens::load_tokenizer;

/// Accuracy of a trained model on its two splits.
#[derive(Debug, Clone)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub test_examples: usize,
    /// Accuracy on the training split.
    pub train_accuracy: f64,
    /// Accuracy on the held-out split.
    pub test_accuracy: f64,
}

fn is_held_out(index: usize) -> bool {
    index % 5 == 4
}

/// A tiny deterministic generator (SplitMix64) so initial weights never change between runs.
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_f32() * 2.0 - 1.0) * bound)
            .collect()
    }
}

fn accuracy(logits: &Tensor, targets: &[u32]) -> anyhow::Result<f64> {
    let predicted: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let correct = predicted
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count();
    Ok(correct as f64 / targets.len().max(1) as f64)
}

/// Splits `(features, label)` examples into train and held-out tensors.
fn split(rows: &[Tensor], labels: &[u32]) -> anyhow::Result<[(Tensor, Vec<u32>); 2]> {
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, (row, &label)) in rows.iter().zip(labels).enumerate() {
        let side = if is_held_out(i) {
            &mut test
        } else {
            &mut train
        };
        side.0.push(row.clone());
        side.1.push(label);
    }
    Ok([
        (Tensor::stack(&train.0, 0)?, train.1),
        (Tensor::stack(&test.0, 0)?, test.1),
    ])
}

/// Optimiser settings of [`fit`].
struct Schedule {
    lr: f64,
    steps: usize,
    l2: f64,
}

/// Full-batch AdamW on cross-entropy (plus L2 on `l2_vars`), deterministic.
fn fit(
    schedule: Schedule,
    vars: Vec<Var>,
    l2_vars: &[Var],
    x: &Tensor,
    y: &[u32],
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> anyhow::Result<()> {
    let targets = Tensor::new(y, x.device())?;
    let Schedule { lr, steps, l2 } = schedule;
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..steps {
        let mut loss = loss::cross_entropy(&forward(x)?, &targets)?;
        for v in l2_vars {
            loss = (loss + (v.as_tensor().sqr()?.sum_all()? * l2)?)?;
        }
        opt.backward_step(&loss)?;
    }
    Ok(())
}

/// Reads `label<TAB>text` lines (`#` comments and blank lines skipped).
pub fn read_sentiment(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<(u32, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((label, sentence)) = line.split_once('\t') else {
            bail!("{}:{}: expected label<TAB>text", path.display(), n + 1);
        };
        let Some(id) = labels.iter().position(|l| *l == label) else {
            bail!("{}:{}: unknown label {label:?}", path.display(), n + 1);
        };
        out.push((id as u32, sentence.trim().to_string()));
    }
    Ok(out)
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_file(to)?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Builds `out/` (the `sentiment` model) from the all-MiniLM-L6-v2 files in `encoder_dir`
/// and the sentences in `data`.
pub fn train_sentiment(encoder_dir: &Path, data: &Path, out: &Path) -> anyhow::Result<Report> {
    const LABELS: [&str; 2] = ["negative", "positive"];
    const MAX_TOKENS: usize = 256;
    let examples = read_sentiment(data, &LABELS)?;
    std::fs::create_dir_all(out)?;
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        link_or_copy(&encoder_dir.join(file), &out.join(file))?;
    }
    let device = Device::Cpu;
    let (body, config) = load_body(out, &device, candle_core::DType::F32)?;
    let tokenizer = load_tokenizer(out, MAX_TOKENS.min(config.max_position_embeddings))?;

    let mut rows = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(32) {
        let inputs = chunk
            .iter()
            .map(|(_, s)| prepare_input(Some(&tokenizer), s, &[]))
            .collect::<anyhow::Result<Vec<ModelInput>>>()?;
        let embedded = body.embed(&inputs, true)?;
        for i in 0..chunk.len() {
            rows.push(embedded.get(i)?);
        }
    }
    let labels: Vec<u32> = examples.iter().map(|(l, _)| *l).collect();
    let [(x_train, y_train), (x_test, y_test)] = split(&rows, &labels)?;

    let hidden = config.hidden_size;
    let weight = Var::zeros((LABELS.len(), hidden), DType::F32, &device)?;
    let bias = Var::zeros(LABELS.len(), DType::F32, &device)?;
    let head = Linear::new(weight.as_tensor().clone(), Some(bias.as_tensor().clone()));
    fit(
        Schedule {
            lr: 0.05,
            steps: 400,
            l2: 1e-4,
        },
        vec![weight.clone(), bias.clone()],
        std::slice::from_ref(&weight),
        &x_train,
        &y_train,
        |x| head.forward(x),
    )?;
    write_head(
        &out.join(HEAD_FILE),
        weight.as_tensor(),
        bias.as_tensor(),
        &HeadConfig {
            labels: LABELS.iter().map(|s| s.to_string()).collect(),
            normalize: true,
            max_tokens: Some(MAX_TOKENS),
        },
    )?;
    Ok(Report {
        model: "sentiment".into(),
        train_examples: y_train.len(),
        test_examples: y_test.len(),
        train_accuracy: accuracy(&head.forward(&x_train)?, &y_train)?,
        test_accuracy: accuracy(&head.forward(&x_test)?, &y_test)?,
    })
}

/// Builds `out/` (the `iris` model) from the iris CSV (4 numeric columns, then species).
pub fn train_iris(csv: &Path, out: &Path) -> anyhow::Result<Report> {
    const LABELS: [&str; 3] = ["setosa", "versicolor", "virginica"];
    const FEATURES: usize = 4;
    const HIDDEN: usize = 16;
    let text = std::fs::read_to_string(csv).with_context(|| format!("{}", csv.display()))?;
    let device = Device::Cpu;
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cells: Vec<&str> = line.trim().split(',').collect();
        if cells.len() != FEATURES + 1 {
            bail!(
                "{}:{}: expected {} columns",
                csv.display(),
                n + 1,
                FEATURES + 1
            );
        }
        let features = cells[..FEATURES]
            .iter()
            .map(|c| c.parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}:{}", csv.display(), n + 1))?;
        let Some(label) = LABELS.iter().position(|l| *l == cells[FEATURES]) else {
            bail!("{}:{}: unknown species", csv.display(), n + 1);
        };
        rows.push(Tensor::new(features.as_slice(), &device)?);
        labels.push(label as u32);
    }
    let [(x_train, y_train), (x_test, y_test)] = split(&rows, &labels)?;
    let mean = x_train.mean(0)?;
    let std = x_train
        .broadcast_sub(&mean)?
        .sqr()?
        .mean(0)?
        .sqrt()?
        .clamp(1e-6, f64::INFINITY)?;

    let mut rng = SplitMix(20_240_601);
    let layer = |rng: &mut SplitMix, out: usize, inp: usize| -> anyhow::Result<(Var, Var)> {
        let bound = 1.0 / (inp as f32).sqrt();
        Ok((
            Var::from_vec(rng.uniform(out * inp, bound), (out, inp), &device)?,
            Var::from_vec(rng.uniform(out, bound), out, &device)?,
        ))
    };
    let (w0, b0) = layer(&mut rng, HIDDEN, FEATURES)?;
    let (w1, b1) = layer(&mut rng, LABELS.len(), HIDDEN)?;
    let tensors: HashMap<String, Tensor> = HashMap::from([
        ("normalizer.mean".to_string(), mean),
        ("normalizer.std".to_string(), std),
        ("layers.0.weight".to_string(), w0.as_tensor().clone()),
        ("layers.0.bias".to_string(), b0.as_tensor().clone()),
        ("layers.1.weight".to_string(), w1.as_tensor().clone()),
        ("layers.1.bias".to_string(), b1.as_tensor().clone()),
    ]);
    let mlp = MlpClassifier::from_tensors(&tensors, FEATURES, &device)?;
    fit(
        Schedule {
            lr: 0.01,
            steps: 600,
            l2: 1e-4,
        },
        vec![w0.clone(), b0, w1.clone(), b1],
        &[w0, w1],
        &x_train,
        &y_train,
        |x| mlp.logits(x),
    )?;

    std::fs::create_dir_all(out)?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    let config = TabularConfig {
        feature_count: FEATURES,
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        feature_names: text
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .take(FEATURES)
            .map(str::to_string)
            .collect(),
    };
    std::fs::write(
        out.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    Ok(Report {
        model: "iris".into(),
        train_examples: y_train.len(),
        test_examples: y_test.len(),
        train_accuracy: accuracy(&mlp.logits(&x_train)?, &y_train)?,
        test_accuracy: accuracy(&mlp.logits(&x_test)?, &y_test)?,
    })
}

/// Writes a head file in the format the worker's `read_head` reads: `weight`, `bias` and
/// the [`HeadConfig`] as JSON in the metadata.
pub fn write_head(
    path: &Path,
    weight: &Tensor,
    bias: &Tensor,
    config: &HeadConfig,
) -> anyhow::Result<()> {
    let metadata = HashMap::from([(
        HEAD_METADATA_KEY.to_string(),
        serde_json::to_string(config)?,
    )]);
    let weight = weight.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let bias = bias.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    safetensors::serialize_to_file([("bias", &bias), ("weight", &weight)], Some(metadata), path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
