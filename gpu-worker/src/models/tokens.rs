//! Token ids in and out of tensors: the serving tokenizer (no padding, truncation at the
//! model's limit) and the padding of a batch to its longest input.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

/// Reads `tokenizer.json` and sets it up for serving: no padding (the batcher pads to the
/// longest input of each batch) and truncation at `max_tokens`.
pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> anyhow::Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
    Ok(tokenizer)
}

/// `rows` padded with `pad` to the longest: token ids and mask (1 on real tokens), both
/// `[batch, longest]` u32 tensors on `device`.
pub fn pad_batch(rows: &[&[u32]], pad: u32, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut mask = Vec::with_capacity(rows.len() * longest);
    for row in rows {
        ids.extend_from_slice(row);
        ids.extend(std::iter::repeat_n(pad, longest - row.len()));
        mask.extend(std::iter::repeat_n(1u32, row.len()));
        mask.extend(std::iter::repeat_n(0u32, longest - row.len()));
    }
    let shape = (rows.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}
