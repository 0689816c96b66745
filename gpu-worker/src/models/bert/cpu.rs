//! A BERT encoder written for the CPU: the same arithmetic as transformers' `BertModel`
//! (absolute positions, post-LayerNorm, exact erf GELU), organised for speed.
//!
//! - **No padding.** A batch's sequences are packed one after another: the dense layers,
//!   which hold almost all the FLOPs, see `[total tokens, hidden]`, so a batch mixing a
//!   short and a 128-token input costs its real tokens, not 128 per input. Attention runs
//!   per (sequence, head) on that sequence's own tokens, so no mask is needed.
//! - **Few, large matrix products, weights packed at load.** Query, key and value come from
//!   one fused projection; the four products per layer run [`kernels::matmul`] on weights
//!   packed once for its register tiles, with the bias and the GELU or the residual applied
//!   to the accumulators before they are stored (no separate pass over the output).
//! - **Buffers reused.** One pass's intermediate buffers serve every layer and are kept for
//!   the next pass: no zero-fill or first-touch page faults per layer.
//! - **One hand-off per pass.** The pass runs on the compute pool (rayon) as a whole, so its
//!   products, attention and LayerNorms share work among the pool's threads without waking
//!   the calling thread. Everything runs on the widest instruction set the CPU has
//!   (AVX-512, AVX2 + FMA, or scalar), chosen at load.
//!
//! The tensor encoder ([`super::tensor`]) serves CUDA; this one serves `Device::Cpu`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::weights::encoder_prefix;
use crate::kernels::{self, Epilogue, Isa, Norm, PackedMatrix};
use anyhow::{Context, bail};
use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct, PositionEmbeddingType};

/// One encoder layer's weights, each dense layer packed with its bias.
struct Layer {
    qkv: PackedMatrix,
    out: PackedMatrix,
    ln1: Norm,
    ff1: PackedMatrix,
    ff2: PackedMatrix,
    ln2: Norm,
}

/// The encoder.
pub struct CpuBert {
    isa: Isa,
    hidden: usize,
    heads: usize,
    max_positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: Norm,
    layers: Vec<Layer>,
    /// The intermediate buffers of the last pass, for the next.
    scratch: Mutex<Vec<f32>>,
}

/// Hidden states of a packed batch: `[total tokens, hidden]`, sequence `i` at rows
/// `offsets[i]..offsets[i + 1]`.
pub struct Packed {
    /// Row-major hidden states.
    pub data: Vec<f32>,
    /// Row offsets, one more than there are sequences.
    pub offsets: Vec<usize>,
    /// Hidden size.
    pub hidden: usize,
}

impl Packed {
    /// The rows of sequence `i`.
    pub fn rows(&self, i: usize) -> &[f32] {
        &self.data[self.offsets[i] * self.hidden..self.offsets[i + 1] * self.hidden]
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn vec_of(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

impl CpuBert {
    /// Whether this encoder computes what `config` describes.
    pub fn supports(config: &BertConfig) -> bool {
        matches!(config.hidden_act, HiddenAct::Gelu)
            && matches!(
                config.position_embedding_type,
                PositionEmbeddingType::Absolute
            )
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
    }

    /// The encoder from a checkpoint's tensors (names with or without a `bert.`-style
    /// prefix, as transformers and sentence-transformers write them).
    pub fn load(tensors: &HashMap<String, Tensor>, config: &BertConfig) -> anyhow::Result<Self> {
        let prefix = encoder_prefix(tensors, config)?;
        let get = |name: &str| -> anyhow::Result<&Tensor> {
            tensors
                .get(&format!("{prefix}{name}"))
                .with_context(|| format!("the checkpoint lacks {prefix}{name}"))
        };
        let isa = Isa::best();
        // x · W with W stored [out, in] by PyTorch: packed from W^T [in, out].
        let dense = |weights: &[String], biases: &[String]| -> anyhow::Result<PackedMatrix> {
            let parts = weights
                .iter()
                .map(|name| Ok(get(name)?.to_dtype(DType::F32)?.t()?))
                .collect::<anyhow::Result<Vec<Tensor>>>()?;
            let w = Tensor::cat(&parts, 1)?;
            let (k, n) = w.dims2()?;
            let mut bias = Vec::with_capacity(n);
            for name in biases {
                bias.extend(vec_of(get(name)?)?);
            }
            if bias.len() != n {
                bail!("{} has {} biases for {n} outputs", weights[0], bias.len());
            }
            Ok(PackedMatrix::new(isa, &vec_of(&w)?, k, n, &bias))
        };
        let one = |name: &str| dense(&[format!("{name}.weight")], &[format!("{name}.bias")]);
        let norm = |name: &str| -> anyhow::Result<Norm> {
            Ok(Norm {
                gamma: vec_of(get(&format!("{name}.weight"))?)?,
                beta: vec_of(get(&format!("{name}.bias"))?)?,
                eps: config.layer_norm_eps as f32,
            })
        };
        let hidden = config.hidden_size;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let part = |m: &str, t: &str| format!("{p}.attention.self.{m}.{t}");
            let parts = ["query", "key", "value"];
            layers.push(Layer {
                // Query, key and value as one [H, 3H] product.
                qkv: dense(
                    &parts.map(|m| part(m, "weight")),
                    &parts.map(|m| part(m, "bias")),
                )?,
                out: one(&format!("{p}.attention.output.dense"))?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ff1: one(&format!("{p}.intermediate.dense"))?,
                ff2: one(&format!("{p}.output.dense"))?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_types = vec_of(get("embeddings.token_type_embeddings.weight")?)?;
        Ok(Self {
            isa,
            hidden,
            heads: config.num_attention_heads,
            max_positions: config.max_position_embeddings,
            word: vec_of(get("embeddings.word_embeddings.weight")?)?,
            position: vec_of(get("embeddings.position_embeddings.weight")?)?,
            token_type0: token_types[..hidden].to_vec(),
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Last hidden states of `sequences` (token ids, special tokens included), packed.
    pub fn forward(&self, sequences: &[&[u32]]) -> anyhow::Result<Packed> {
        let h = self.hidden;
        let vocab = self.word.len() / h;
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for seq in sequences {
            if seq.is_empty() {
                bail!("empty token sequence");
            }
            if seq.len() > self.max_positions {
                bail!(
                    "{} tokens exceed the model's {} positions",
                    seq.len(),
                    self.max_positions
                );
            }
            if let Some(id) = seq.iter().find(|&&id| id as usize >= vocab) {
                bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            offsets.push(offsets[offsets.len() - 1] + seq.len());
        }
        let tokens = offsets[offsets.len() - 1];
        // The whole pass on the compute pool, its other threads kept awake: its parallel
        // steps are shared among them from there, not handed over from this thread one by
        // one or waited for while a sleeping thread wakes.
        let data = kernels::pass(|| self.pass(sequences, &offsets, tokens));
        Ok(Packed {
            data,
            offsets,
            hidden: h,
        })
    }

    fn pass(&self, sequences: &[&[u32]], offsets: &[usize], tokens: usize) -> Vec<f32> {
        let h = self.hidden;
        let mut x = vec![0f32; tokens * h];
        // Embeddings: word + position + token type 0, then LayerNorm; one pass per row.
        let rows: Vec<(u32, usize)> = sequences
            .iter()
            .flat_map(|seq| seq.iter().enumerate().map(|(pos, &id)| (id, pos)))
            .collect();
        kernels::embed(
            self.isa,
            &mut x,
            &rows,
            &self.word,
            &self.position,
            &self.token_type0,
            &self.emb_ln,
        );
        let Some(first) = self.layers.first() else {
            return x;
        };
        // qkv [tokens, 3h], context and x1 [tokens, h], inner [tokens, intermediate]: taken
        // from the last pass's buffers (a concurrent pass allocates its own).
        let widths = [3 * h, h, h, first.ff1.outputs()];
        let need = tokens * widths.iter().sum::<usize>();
        let mut kept = self.scratch.try_lock().ok();
        let mut own = Vec::new();
        let buffer = kept.as_deref_mut().unwrap_or(&mut own);
        if buffer.len() < need {
            buffer.resize(need, 0.0);
        }
        let (qkv, rest) = buffer.split_at_mut(tokens * widths[0]);
        let (context, rest) = rest.split_at_mut(tokens * widths[1]);
        let (x1, rest) = rest.split_at_mut(tokens * widths[2]);
        let inner = &mut rest[..tokens * widths[3]];
        for layer in &self.layers {
            let isa = self.isa;
            kernels::matmul(isa, qkv, &x, &layer.qkv, Epilogue::Bias);
            kernels::attention(isa, context, qkv, offsets, self.heads);
            // x1 = LayerNorm(x + context · W + b)
            kernels::matmul(isa, x1, context, &layer.out, Epilogue::BiasResidual(&x));
            kernels::layer_norm_rows(isa, x1, &layer.ln1);
            kernels::matmul(isa, inner, x1, &layer.ff1, Epilogue::BiasGelu);
            // x = LayerNorm(x1 + GELU(x1 · W1 + b1) · W2 + b2)
            kernels::matmul(isa, &mut x, inner, &layer.ff2, Epilogue::BiasResidual(x1));
            kernels::layer_norm_rows(isa, &mut x, &layer.ln2);
        }
        x
    }
}
