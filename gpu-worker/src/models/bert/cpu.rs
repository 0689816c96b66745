//! A BERT encoder written for the CPU: the same arithmetic as transformers' `BertModel`
//! (absolute positions, post-LayerNorm, exact erf GELU), organised for speed.
//!
//! - **No padding.** A batch's sequences are packed one after another: the dense layers,
//!   which hold almost all the FLOPs, see `[total tokens, hidden]`, so a batch mixing a
//!   short and a 128-token input costs its real tokens, not 128 per input. Attention runs
//!   per (sequence, head) on that sequence's own tokens, so no mask is needed.
//! - **Few, large matrix products.** Query, key and value come from one fused projection;
//!   the four products per layer go to candle's `matmul` (gemm, on every core).
//! - **Fused element-wise work.** Bias, residual, LayerNorm and GELU are each one pass
//!   over a matmul's output that writes the next layer's input; attention, softmax and
//!   those passes run on all cores (rayon), in [`crate::kernels`], on the widest
//!   instruction set the CPU has (AVX-512, AVX2 + FMA, or scalar), chosen at load.
//!
//! The tensor encoder ([`super::tensor`]) serves CUDA; this one serves `Device::Cpu`.

use std::collections::HashMap;

use super::weights::encoder_prefix;
use crate::kernels::{self, Isa, Norm};
use anyhow::{Context, bail};
use candle_core::{DType, Device, Storage, Tensor};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct, PositionEmbeddingType};

/// One encoder layer's weights: matrices pre-transposed to `[in, out]` for `x · W`.
struct Layer {
    qkv_w: Tensor,
    qkv_b: Vec<f32>,
    out_w: Tensor,
    out_b: Vec<f32>,
    ln1: Norm,
    ff1_w: Tensor,
    ff1_b: Vec<f32>,
    ff2_w: Tensor,
    ff2_b: Vec<f32>,
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

/// Calls `f` with the f32 contents of a contiguous CPU tensor, without copying.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("the CPU encoder got a tensor on another device");
    };
    let all = cpu.as_slice::<f32>()?;
    let start = layout.start_offset();
    let end = start + layout.shape().elem_count();
    if !layout.is_contiguous() {
        bail!("the CPU encoder needs contiguous tensors");
    }
    Ok(f(&all[start..end]))
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
        // x · W with W stored [out, in] by PyTorch: keep W^T [in, out], contiguous.
        let transposed = |name: &str| -> anyhow::Result<Tensor> {
            Ok(get(name)?.to_dtype(DType::F32)?.t()?.contiguous()?)
        };
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
            let qkv_w = Tensor::cat(
                &[
                    transposed(&format!("{p}.attention.self.query.weight"))?,
                    transposed(&format!("{p}.attention.self.key.weight"))?,
                    transposed(&format!("{p}.attention.self.value.weight"))?,
                ],
                1,
            )?
            .contiguous()?;
            let mut qkv_b = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                qkv_b.extend(vec_of(get(&format!("{p}.attention.self.{part}.bias"))?)?);
            }
            layers.push(Layer {
                qkv_w,
                qkv_b,
                out_w: transposed(&format!("{p}.attention.output.dense.weight"))?,
                out_b: vec_of(get(&format!("{p}.attention.output.dense.bias"))?)?,
                ln1: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ff1_w: transposed(&format!("{p}.intermediate.dense.weight"))?,
                ff1_b: vec_of(get(&format!("{p}.intermediate.dense.bias"))?)?,
                ff2_w: transposed(&format!("{p}.output.dense.weight"))?,
                ff2_b: vec_of(get(&format!("{p}.output.dense.bias"))?)?,
                ln2: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_types = vec_of(get("embeddings.token_type_embeddings.weight")?)?;
        Ok(Self {
            isa: Isa::best(),
            hidden,
            heads: config.num_attention_heads,
            max_positions: config.max_position_embeddings,
            word: vec_of(get("embeddings.word_embeddings.weight")?)?,
            position: vec_of(get("embeddings.position_embeddings.weight")?)?,
            token_type0: token_types[..hidden].to_vec(),
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
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
        for layer in &self.layers {
            x = self.layer(layer, x, &offsets)?;
        }
        Ok(Packed {
            data: x,
            offsets,
            hidden: h,
        })
    }

    fn layer(&self, layer: &Layer, x: Vec<f32>, offsets: &[usize]) -> anyhow::Result<Vec<f32>> {
        let h = self.hidden;
        let tokens = x.len() / h;
        let x = Tensor::from_vec(x, (tokens, h), &Device::Cpu)?;
        let qkv = x.matmul(&layer.qkv_w)?;
        let context = with_slice(&qkv, |qkv| {
            kernels::attention(self.isa, qkv, &layer.qkv_b, offsets, self.heads)
        })?;
        let context = Tensor::from_vec(context, (tokens, h), &Device::Cpu)?;
        let attended = context.matmul(&layer.out_w)?;
        // x1 = LayerNorm(x + attended + bias)
        let mut x1 = vec![0f32; tokens * h];
        with_slice(&x, |x| {
            with_slice(&attended, |a| {
                kernels::residual_norm(self.isa, &mut x1, x, a, &layer.out_b, &layer.ln1)
            })
        })??;
        let x1 = Tensor::from_vec(x1, (tokens, h), &Device::Cpu)?;
        let inner = x1.matmul(&layer.ff1_w)?;
        let width = layer.ff1_b.len();
        let mut activated = vec![0f32; tokens * width];
        with_slice(&inner, |inner| {
            kernels::bias_gelu(self.isa, &mut activated, inner, &layer.ff1_b)
        })?;
        let activated = Tensor::from_vec(activated, (tokens, width), &Device::Cpu)?;
        let projected = activated.matmul(&layer.ff2_w)?;
        let mut out = vec![0f32; tokens * h];
        with_slice(&x1, |x1| {
            with_slice(&projected, |p| {
                kernels::residual_norm(self.isa, &mut out, x1, p, &layer.ff2_b, &layer.ln2)
            })
        })??;
        Ok(out)
    }
}
