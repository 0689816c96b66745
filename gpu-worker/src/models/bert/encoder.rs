//! The BERT encoder behind one interface: the packed CPU encoder ([`super::cpu`]) on the
//! CPU in f32 when it covers the configuration, the tensor encoder ([`super::tensor`])
//! otherwise (CUDA, half precision), and the poolings the heads use (first token, mean).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::Config as BertConfig;

use super::cpu::CpuBert;
use super::tensor::TensorBert;
use crate::models::hf_config::read_bert_config;
use crate::models::model::{ModelInput, token_rows};
use crate::models::tokens::cut_padding;

/// Which implementation runs the encoder.
enum Engine {
    /// The packed, fused CPU encoder ([`CpuBert`]): the CPU in f32.
    Cpu(CpuBert),
    /// The tensor encoder ([`TensorBert`]): CUDA, half precision, and configurations the
    /// CPU encoder does not cover.
    Tensor(TensorBert),
}

/// A BERT encoder that takes batches of token ids.
pub struct BertBody {
    engine: Engine,
    device: Device,
}

impl BertBody {
    /// The tensor encoder, when it is the one running (profiling).
    pub fn tensor(&self) -> Option<&TensorBert> {
        match &self.engine {
            Engine::Tensor(bert) => Some(bert),
            Engine::Cpu(_) => None,
        }
    }

    /// The encoder over a checkpoint's tensors: the packed CPU encoder on the CPU in f32
    /// when it covers the configuration, the tensor encoder otherwise.
    pub fn load(
        tensors: &HashMap<String, Tensor>,
        config: &BertConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        let engine = if device.is_cpu() && dtype == DType::F32 && CpuBert::supports(config) {
            Engine::Cpu(CpuBert::load(tensors, config)?)
        } else {
            Engine::Tensor(TensorBert::load(tensors, config, dtype, device)?)
        };
        Ok(Self {
            engine,
            device: device.clone(),
        })
    }

    /// The hidden state of each input's first token (`[CLS]`): `[batch, hidden]`.
    pub fn first_token(&self, inputs: &[ModelInput]) -> anyhow::Result<Tensor> {
        let rows = token_rows(inputs)?;
        match &self.engine {
            Engine::Cpu(bert) => {
                let packed = bert.forward(&rows)?;
                let h = packed.hidden;
                let mut out = Vec::with_capacity(rows.len() * h);
                for i in 0..packed.len() {
                    out.extend_from_slice(&packed.rows(i)[..h]);
                }
                Ok(Tensor::from_vec(out, (rows.len(), h), &self.device)?)
            }
            Engine::Tensor(bert) => bert.first_token(&rows),
        }
    }

    /// Per input, the last hidden state of every real token, `[tokens, hidden]` row-major.
    pub fn token_states(&self, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        match &self.engine {
            Engine::Cpu(bert) => {
                let packed = bert.forward(rows)?;
                Ok((0..packed.len()).map(|i| packed.rows(i).to_vec()).collect())
            }
            Engine::Tensor(bert) => {
                let (hidden, _) = bert.forward_padded(rows)?;
                cut_padding(&hidden, rows)
            }
        }
    }

    /// Mean of the hidden states over real tokens, optionally L2-normalised: `[batch, hidden]`.
    pub fn embed(&self, inputs: &[ModelInput], normalize: bool) -> anyhow::Result<Tensor> {
        let rows = token_rows(inputs)?;
        let mean = match &self.engine {
            Engine::Cpu(bert) => {
                let packed = bert.forward(&rows)?;
                let h = packed.hidden;
                let mut out = vec![0f32; rows.len() * h];
                for (i, mean) in out.chunks_exact_mut(h).enumerate() {
                    let tokens = packed.rows(i);
                    for row in tokens.chunks_exact(h) {
                        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                    }
                    let n = (tokens.len() / h) as f32;
                    mean.iter_mut().for_each(|m| *m /= n);
                    if normalize {
                        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                        mean.iter_mut().for_each(|m| *m /= norm);
                    }
                }
                return Ok(Tensor::from_vec(out, (rows.len(), h), &self.device)?);
            }
            Engine::Tensor(bert) => bert.mean_pooled(&rows)?,
        };
        if !normalize {
            return Ok(mean);
        }
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::INFINITY)?;
        Ok(mean.broadcast_div(&norm)?)
    }
}

/// The tensors of `dir/model.safetensors`.
pub fn read_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(dir.join("model.safetensors"), device)
        .context("reading model.safetensors")
}

/// Loads the BERT body of `dir` (`config.json` + `model.safetensors`) and its config.
pub fn load_body(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<(BertBody, BertConfig)> {
    let (config, _) = read_bert_config(dir)?;
    let tensors = read_weights(dir, device)?;
    Ok((BertBody::load(&tensors, &config, device, dtype)?, config))
}
