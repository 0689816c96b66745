//! A transformers `BertForSequenceClassification` checkpoint (tiny, random, written by
//! this test in the exact layout transformers saves) must load unchanged and give the
//! logits of an independent reference: a plain f64 implementation of the BERT forward
//! pass written from the architecture, sharing no code with Candle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use inferencehub_worker::models::bert::classifier::sequence_classifier;
use inferencehub_worker::models::{LoadOptions, ModelInput, load_model};

const VOCAB: [&str; 16] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "hello", "world", "good",
    "bad", "##s", "movie", "a",
];
const H: usize = 8;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 16;
const POSITIONS: usize = 32;
const LABELS: usize = 3;
const EPS: f64 = 1e-12;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
}

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn random_checkpoint() -> Weights {
    let mut rng = Rng(7);
    let mut w = Weights::new();
    let mut add = |name: String, shape: Vec<usize>, around: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| around + rng.next()).collect();
        w.insert(name, (shape, data));
    };
    let v = VOCAB.len();
    add(
        "bert.embeddings.word_embeddings.weight".into(),
        vec![v, H],
        0.0,
    );
    add(
        "bert.embeddings.position_embeddings.weight".into(),
        vec![POSITIONS, H],
        0.0,
    );
    add(
        "bert.embeddings.token_type_embeddings.weight".into(),
        vec![2, H],
        0.0,
    );
    add("bert.embeddings.LayerNorm.weight".into(), vec![H], 1.0);
    add("bert.embeddings.LayerNorm.bias".into(), vec![H], 0.0);
    for l in 0..LAYERS {
        let p = format!("bert.encoder.layer.{l}");
        for m in ["query", "key", "value"] {
            add(format!("{p}.attention.self.{m}.weight"), vec![H, H], 0.0);
            add(format!("{p}.attention.self.{m}.bias"), vec![H], 0.0);
        }
        add(
            format!("{p}.attention.output.dense.weight"),
            vec![H, H],
            0.0,
        );
        add(format!("{p}.attention.output.dense.bias"), vec![H], 0.0);
        add(
            format!("{p}.attention.output.LayerNorm.weight"),
            vec![H],
            1.0,
        );
        add(format!("{p}.attention.output.LayerNorm.bias"), vec![H], 0.0);
        add(
            format!("{p}.intermediate.dense.weight"),
            vec![INTER, H],
            0.0,
        );
        add(format!("{p}.intermediate.dense.bias"), vec![INTER], 0.0);
        add(format!("{p}.output.dense.weight"), vec![H, INTER], 0.0);
        add(format!("{p}.output.dense.bias"), vec![H], 0.0);
        add(format!("{p}.output.LayerNorm.weight"), vec![H], 1.0);
        add(format!("{p}.output.LayerNorm.bias"), vec![H], 0.0);
    }
    add("bert.pooler.dense.weight".into(), vec![H, H], 0.0);
    add("bert.pooler.dense.bias".into(), vec![H], 0.0);
    add("classifier.weight".into(), vec![LABELS, H], 0.0);
    add("classifier.bias".into(), vec![LABELS], 0.0);
    w
}

fn write_checkpoint(dir: &Path, weights: &Weights) {
    let tensors: HashMap<String, Tensor> = weights
        .iter()
        .map(|(name, (shape, data))| {
            (
                name.clone(),
                Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": VOCAB.len(),
        "hidden_size": H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTER,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": EPS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "classifier_dropout": null,
        "id2label": {"0": "negative", "1": "neutral", "2": "positive"},
        "label2id": {"negative": 0, "neutral": 1, "positive": 2},
        "problem_type": "single_label_classification",
        "torch_dtype": "float32",
        "transformers_version": "4.44.0"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let special = |id: usize| {
        serde_json::json!({"id": id, "content": VOCAB[id], "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0), special(1), special(2), special(3)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

// ---- the reference: plain f64 loops -------------------------------------------------

struct Reference<'a>(&'a Weights);

impl Reference<'_> {
    fn w(&self, name: &str) -> Vec<f64> {
        self.0[name].1.iter().map(|&x| x as f64).collect()
    }

    /// y = W x + b with W stored [out, in] (torch's Linear layout).
    fn linear(&self, prefix: &str, x: &[f64]) -> Vec<f64> {
        let w = self.w(&format!("{prefix}.weight"));
        let b = self.w(&format!("{prefix}.bias"));
        let inp = x.len();
        (0..b.len())
            .map(|o| b[o] + (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>())
            .collect()
    }

    fn layer_norm(&self, prefix: &str, x: &[f64]) -> Vec<f64> {
        let g = self.w(&format!("{prefix}.weight"));
        let b = self.w(&format!("{prefix}.bias"));
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        x.iter()
            .enumerate()
            .map(|(i, v)| (v - mean) / (var + EPS).sqrt() * g[i] + b[i])
            .collect()
    }

    fn logits(&self, ids: &[u32]) -> Vec<f64> {
        let t = ids.len();
        let word = self.w("bert.embeddings.word_embeddings.weight");
        let pos = self.w("bert.embeddings.position_embeddings.weight");
        let typ = self.w("bert.embeddings.token_type_embeddings.weight");
        let mut x: Vec<Vec<f64>> = (0..t)
            .map(|p| {
                let e: Vec<f64> = (0..H)
                    .map(|i| word[ids[p] as usize * H + i] + pos[p * H + i] + typ[i])
                    .collect();
                self.layer_norm("bert.embeddings.LayerNorm", &e)
            })
            .collect();
        let d = H / HEADS;
        for l in 0..LAYERS {
            let p = format!("bert.encoder.layer.{l}");
            let q: Vec<_> = x
                .iter()
                .map(|v| self.linear(&format!("{p}.attention.self.query"), v))
                .collect();
            let k: Vec<_> = x
                .iter()
                .map(|v| self.linear(&format!("{p}.attention.self.key"), v))
                .collect();
            let v: Vec<_> = x
                .iter()
                .map(|v| self.linear(&format!("{p}.attention.self.value"), v))
                .collect();
            let mut context = vec![vec![0.0; H]; t];
            for h in 0..HEADS {
                for a in 0..t {
                    let scores: Vec<f64> = (0..t)
                        .map(|b| {
                            (0..d)
                                .map(|j| q[a][h * d + j] * k[b][h * d + j])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = exp.iter().sum();
                    for b in 0..t {
                        for j in 0..d {
                            context[a][h * d + j] += exp[b] / total * v[b][h * d + j];
                        }
                    }
                }
            }
            x = (0..t)
                .map(|a| {
                    let out = self.linear(&format!("{p}.attention.output.dense"), &context[a]);
                    let res: Vec<f64> = out.iter().zip(&x[a]).map(|(o, r)| o + r).collect();
                    let attended =
                        self.layer_norm(&format!("{p}.attention.output.LayerNorm"), &res);
                    let inter: Vec<f64> = self
                        .linear(&format!("{p}.intermediate.dense"), &attended)
                        .into_iter()
                        .map(gelu)
                        .collect();
                    let out = self.linear(&format!("{p}.output.dense"), &inter);
                    let res: Vec<f64> = out.iter().zip(&attended).map(|(o, r)| o + r).collect();
                    self.layer_norm(&format!("{p}.output.LayerNorm"), &res)
                })
                .collect();
        }
        let pooled: Vec<f64> = self
            .linear("bert.pooler.dense", &x[0])
            .into_iter()
            .map(f64::tanh)
            .collect();
        self.linear("classifier", &pooled)
    }
}

/// Exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (error < 1.5e-7).
fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn erf(x: f64) -> f64 {
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    sign * (1.0 - poly * (-x * x).exp())
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

#[test]
fn bert_for_sequence_classification_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights = random_checkpoint();
    write_checkpoint(dir.path(), &weights);
    let reference = Reference(&weights);

    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        max_prompt_bytes: 1000,
    };
    let mut model = load_model(dir.path(), "tiny", &opts).unwrap();
    assert_eq!(model.info.labels, ["negative", "neutral", "positive"]);
    assert_eq!(model.info.architecture, "bert-sequence-classification");
    assert_eq!(model.info.max_tokens as usize, POSITIONS);

    // The tokenizer follows tokenizer.json: lowercasing, WordPiece, [CLS] ... [SEP].
    let prompts = [
        "Hello world",
        "the cat sat on the mat",
        "good movies",
        "bad",
    ];
    let expected_ids: [&[u32]; 4] = [
        &[2, 9, 10, 3],
        &[2, 4, 5, 6, 7, 4, 8, 3],
        &[2, 11, 14, 13, 3],
        &[2, 12, 3],
    ];
    let inputs: Vec<ModelInput> = prompts
        .iter()
        .map(|p| model.prepare(p, &[]).unwrap())
        .collect();
    for (input, ids) in inputs.iter().zip(expected_ids) {
        assert_eq!(input, &ModelInput::Tokens(ids.to_vec()));
    }

    // Logits of the padded batch equal the reference run on each unpadded sequence.
    let (classifier, _, _) = sequence_classifier(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let logits = classifier.logits(&inputs).unwrap();
    let probabilities = model
        .model
        .forward(&inputs)
        .unwrap()
        .into_iter()
        .map(|o| o.row)
        .collect::<Vec<_>>();
    for (i, ids) in expected_ids.iter().enumerate() {
        let want = reference.logits(ids);
        for (got, want) in logits[i].iter().zip(&want) {
            assert!(
                (*got as f64 - want).abs() < 1e-4,
                "row {i}: {:?} vs {want:?}",
                logits[i]
            );
        }
        for (got, want) in probabilities[i].iter().zip(softmax(&want)) {
            assert!(
                (*got as f64 - want).abs() < 1e-5,
                "row {i}: {:?}",
                probabilities[i]
            );
        }
    }
    // The random weights must separate the inputs, or the comparison proves little.
    assert!((logits[0][0] - logits[1][0]).abs() > 1e-3);

    // The tensor encoder (the GPU path, here on the CPU) in f32 and in half precision: a
    // padded batch of different lengths, the finite padding mask, length buckets.
    // 300 copies of the four inputs make buckets large enough (over 1 024 token rows) for
    // the biases to fold into the matrix products, and small ones that do not.
    let many: Vec<ModelInput> = inputs.iter().cycle().take(4 * 300).cloned().collect();
    for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::F16, 2e-2)] {
        let (classifier, _, _) = sequence_classifier(dir.path(), &Device::Cpu, dtype).unwrap();
        let got = classifier.logits(&many).unwrap();
        for (i, got) in got.iter().enumerate() {
            let want = reference.logits(expected_ids[i % 4]);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g.is_finite() && (*g as f64 - w).abs() < tolerance,
                    "{dtype:?} row {i}: {got:?} vs {want:?}"
                );
            }
        }
    }

    // Truncation stops at the model's own limit.
    let long = "cat ".repeat(100);
    match model.prepare(&long, &[]).unwrap() {
        ModelInput::Tokens(ids) => assert_eq!(ids.len(), POSITIONS),
        other => panic!("{other:?}"),
    }
}

/// The tensor encoder's two sets of kernels, whole passes over a padded batch: the fused
/// ones (on the CPU, the plain implementations of the CUDA kernels' contracts: padded keys
/// skipped, biases added after bias-free products, residual + LayerNorm in one step)
/// against candle's operations (which the test above holds to the f64 reference). The CPU
/// itself serves the latter.
#[test]
fn fused_kernels_match_the_reference_path_through_the_encoder() {
    use inferencehub_worker::models::bert::encoder::read_weights;
    use inferencehub_worker::models::bert::tensor::{Kernels, TensorBert};

    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &random_checkpoint());
    let tensors = read_weights(dir.path(), &Device::Cpu).unwrap();
    let config: candle_transformers::models::bert::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let rows: [&[u32]; 3] = [&[2, 9, 10, 3], &[2, 4, 5, 6, 7, 4, 8, 3], &[2, 12, 3]];
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 2e-2)] {
        let bert = TensorBert::load(&tensors, &config, dtype, &Device::Cpu).unwrap();
        assert_eq!(bert.kernels(), Kernels::Reference, "{dtype:?}");
        let (worst, largest) = bert.compare_kernels(&rows).unwrap();
        assert!(
            worst < tolerance && largest >= 1.0,
            "{dtype:?}: fused and reference kernels differ by {worst}"
        );
        // The fused pass's states differ between tokens: equal outputs would prove nothing.
        let (fused, _) = bert
            .forward_observed(&rows, Kernels::Fused, &mut |_| Ok(()))
            .unwrap();
        let fused = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(fused.iter().all(|v| v.is_finite()));
        assert!((fused[0] - fused[H]).abs() > 1e-3);
    }
}

#[test]
fn refuses_a_checkpoint_it_cannot_serve_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    let weights = random_checkpoint();
    write_checkpoint(dir.path(), &weights);
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        max_prompt_bytes: 1000,
    };

    let config_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["architectures"] = serde_json::json!(["GPT2ForSequenceClassification"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load_model(dir.path(), "tiny", &opts)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("not supported"), "{err:#}");

    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["id2label"] = serde_json::json!({"0": "a", "1": "b"});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load_model(dir.path(), "tiny", &opts)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("id2label"), "{err:#}");
}
