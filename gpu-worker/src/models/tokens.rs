//! Token ids in and out of tensors: the serving tokenizer (no padding, truncation at the
//! model's limit), the length buckets a batch is split into, and the padding of a batch to
//! its longest input.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use super::wordpiece::FastWordPiece;

/// A prompt's token ids (special tokens included, cut at the model's window) and whether it
/// was cut.
pub type Tokens = (Vec<u32>, bool);

/// A text model's tokenizer as the worker serves it: `tokenizer.json` with no padding (the
/// batcher pads to the longest input of each batch) and truncation at the model's limit,
/// and, where that tokenizer is BERT's WordPiece pipeline, its fast path ([`FastWordPiece`]:
/// the same ids).
pub struct PromptTokenizer {
    library: Tokenizer,
    fast: Option<FastWordPiece>,
    /// The window, where the worker cuts the library's ids itself: tokenizers without a
    /// post-processor, for which `tokenizers` 0.23 cuts a long prompt but reports no
    /// overflow (nothing is added around the ids then, so cutting them is all truncation
    /// does).
    cut_here: Option<usize>,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("fast", &self.fast)
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// `tokenizer` set up for serving: no padding, truncation at `max_tokens`.
    pub fn new(mut tokenizer: Tokenizer, max_tokens: usize) -> anyhow::Result<Self> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        let fast = FastWordPiece::for_tokenizer(&tokenizer)
            .inspect_err(|why| tracing::debug!(why, "no fast tokenizer path"))
            .ok();
        let cut_here = tokenizer
            .get_post_processor()
            .is_none()
            .then_some(max_tokens);
        if cut_here.is_some() {
            tokenizer
                .with_truncation(None)
                .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        }
        Ok(Self {
            library: tokenizer,
            fast,
            cut_here,
        })
    }

    /// The token ids of `prompt` (special tokens included, cut at the truncation length)
    /// and whether anything was cut.
    pub fn tokenize(&self, prompt: &str) -> anyhow::Result<Tokens> {
        match self.fast_tokenize(prompt) {
            Some(done) => Ok(done),
            None => self.library_tokenize(prompt),
        }
    }

    /// [`Self::tokenize`] for each of `prompts`, in order.
    pub fn tokenize_all(&self, prompts: &[String]) -> anyhow::Result<Vec<Tokens>> {
        prompts.iter().map(|p| self.tokenize(p)).collect()
    }

    /// [`Self::tokenize`] by the fast path alone: `None` where the tokenizer has none, or
    /// the prompt is the library's (it holds an added token, or a combining mark that
    /// stripping accents would keep).
    pub fn fast_tokenize(&self, prompt: &str) -> Option<Tokens> {
        self.fast.as_ref()?.tokenize(prompt)
    }

    /// [`Self::tokenize`] by the library alone (what the fast path is checked against).
    pub fn library_tokenize(&self, prompt: &str) -> anyhow::Result<Tokens> {
        let encoding = self
            .library
            .encode_fast(prompt, true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        let truncated = match self.cut_here {
            Some(window) if ids.len() > window => {
                ids.truncate(window);
                true
            }
            Some(_) => false,
            None => !encoding.get_overflowing().is_empty(),
        };
        Ok((ids, truncated))
    }

    /// The token ids and "cut" flags of `prompts` ([`Self::tokenize`] each) where that is
    /// quick enough for an async task to do without holding up the others on its thread;
    /// `None` where it is not (the caller hands it to the blocking pool). Quick: at most 128
    /// bytes in all (the library takes ≈ 0.4 µs a byte, 1.8 µs a byte at worst), or at most
    /// 1 KiB that the fast path takes whole (12 ns a byte for English, 60 for Cyrillic; at
    /// worst ≈ 90 µs a KiB: Hangul, each syllable decomposed into its letters).
    pub fn tokenize_in_place(&self, prompts: &[String]) -> Option<anyhow::Result<Vec<Tokens>>> {
        let bytes: usize = prompts.iter().map(String::len).sum();
        if bytes <= 128 {
            return Some(self.tokenize_all(prompts));
        }
        if bytes > 1024 {
            return None;
        }
        prompts
            .iter()
            .map(|p| self.fast_tokenize(p))
            .collect::<Option<_>>()
            .map(Ok)
    }

    /// Whether the tokenizer has the fast path ([`FastWordPiece`]).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }
}

/// Reads `tokenizer.json` from `dir` and sets it up for serving ([`PromptTokenizer::new`]).
pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> anyhow::Result<PromptTokenizer> {
    let path = dir.join("tokenizer.json");
    let tokenizer =
        Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    PromptTokenizer::new(tokenizer, max_tokens)
}

/// `rows` padded with `pad` to the longest, row-major: token ids, the mask (1 on real
/// tokens, 0 on padding), and the longest length. In the element type the model takes.
pub fn pad_rows<T: From<u32> + Copy>(rows: &[&[u32]], pad: u32) -> (Vec<T>, Vec<T>, usize) {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut mask = Vec::with_capacity(rows.len() * longest);
    let (pad, one, zero) = (T::from(pad), T::from(1), T::from(0));
    for row in rows {
        ids.extend(row.iter().map(|&t| T::from(t)));
        ids.extend(std::iter::repeat_n(pad, longest - row.len()));
        mask.extend(std::iter::repeat_n(one, row.len()));
        mask.extend(std::iter::repeat_n(zero, longest - row.len()));
    }
    (ids, mask, longest)
}

/// [`pad_rows`] as `[batch, longest]` u32 tensors on `device`.
pub fn pad_batch(rows: &[&[u32]], pad: u32, device: &Device) -> anyhow::Result<(Tensor, Tensor)> {
    let (ids, mask, longest) = pad_rows::<u32>(rows, pad);
    let shape = (rows.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// Each input's real tokens of padded states `[batch, longest, hidden]`, row-major.
pub fn cut_padding(hidden: &Tensor, rows: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
    let states = hidden.to_vec3::<f32>()?;
    Ok(states
        .into_iter()
        .zip(rows)
        .map(|(tokens, row)| tokens.into_iter().take(row.len()).flatten().collect())
        .collect())
}

/// Splits inputs into groups to pad separately: sorted by length, a group closes when the
/// next input would make its padded size exceed 1.25 × its real tokens and it already holds
/// 8 inputs (smaller groups cost more in kernel launches than padding saves). Returns input
/// indices per group, shortest inputs first.
pub fn buckets(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|i| lengths[*i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = lengths[i];
        let padded = (current.len() + 1) * len;
        if current.len() >= 8 && padded * 4 > (real + len) * 5 {
            groups.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(i);
        real += len;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lengths_stay_in_one_bucket() {
        assert_eq!(buckets(&[16; 40]), vec![(0..40).collect::<Vec<_>>()]);
    }

    #[test]
    fn mixed_lengths_split_and_cover_every_input_once() {
        let mut lengths = vec![8usize; 30];
        lengths.extend(vec![128usize; 30]);
        lengths.push(64);
        let groups = buckets(&lengths);
        assert!(groups.len() >= 2, "{groups:?}");
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        // Padding is at most 25% over the real tokens in every group of 8 or more.
        for g in &groups {
            let longest = g.iter().map(|i| lengths[*i]).max().unwrap_or(0);
            let real: usize = g.iter().map(|i| lengths[*i]).sum();
            assert!(g.len() * longest * 4 <= real * 5 || g.len() <= 8, "{g:?}");
        }
        let padded: usize = groups
            .iter()
            .map(|g| g.len() * g.iter().map(|i| lengths[*i]).max().unwrap_or(0))
            .sum();
        // One padded batch would cost 61 x 128 = 7 808 tokens; the real ones are 4 144.
        let real: usize = lengths.iter().sum();
        assert!(
            padded * 4 <= real * 5,
            "{padded} padded for {real} real tokens"
        );
    }

    #[test]
    fn a_few_inputs_are_never_split() {
        assert_eq!(buckets(&[3, 100, 7]).len(), 1);
        assert!(buckets(&[]).is_empty());
    }
}
