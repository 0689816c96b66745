//! A fast path for the BERT tokenizer on ASCII prompts: the same ids as the Hugging Face
//! pipeline it is built from (`BertNormalizer` → `BertPreTokenizer` → `WordPiece` → the
//! special tokens around the sequence → truncation), without its per-character bookkeeping.
//!
//! The library keeps, for every character, where it came from (offsets through
//! normalization and splitting) and allocates a string for each piece it looks up; the
//! serving path needs only the ids and whether the prompt was cut. Under load that
//! bookkeeping was a third of the worker's per-call CPU outside the forward pass: a short
//! sentence (45 bytes) took 17–20 µs with warm caches, and about 50 µs between forward
//! passes; this path takes 0.8 µs.
//!
//! It applies only where the result is provably the library's: the tokenizer must be that
//! exact pipeline (anything else, or any setting it does not model, leaves the library to
//! do all the work), and the prompt must be ASCII and hold none of the tokenizer's added
//! tokens (in any case), so that normalization reduces to dropping control characters,
//! turning tabs and line breaks into spaces and lowercasing, and splitting to spaces and
//! ASCII punctuation. Every other prompt goes to the library.

use std::collections::HashMap;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, PostProcessor, Tokenizer, TruncationDirection, TruncationStrategy};

/// The BERT pipeline of one tokenizer, for ASCII prompts.
pub struct AsciiWordPiece {
    /// The vocabulary, for a word's first piece.
    first: HashMap<Box<str>, u32>,
    /// The continuation pieces, keyed without their prefix (`##ing` as `ing`).
    rest: HashMap<Box<str>, u32>,
    /// The longest key of each table, in bytes: no longer stretch is looked up.
    first_longest: usize,
    rest_longest: usize,
    unk: u32,
    /// Longer words are one unknown token.
    max_word: usize,
    lowercase: bool,
    /// The special tokens before and after the sequence.
    before: Vec<u32>,
    after: Vec<u32>,
    /// Most sequence tokens kept (the truncation length less the special tokens).
    keep: usize,
    /// The added tokens' contents, lowercased: a prompt holding one is the library's.
    added: Vec<String>,
}

impl std::fmt::Debug for AsciiWordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsciiWordPiece")
            .field("vocabulary", &self.first.len())
            .field("lowercase", &self.lowercase)
            .field("before", &self.before)
            .field("after", &self.after)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl AsciiWordPiece {
    /// The fast path for `tokenizer`, or why it has none (its pipeline is not the one
    /// modelled here).
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Self, String> {
        let lowercase = match tokenizer.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(n)) if n.clean_text => n.lowercase,
            other => return Err(format!("normalizer {other:?}")),
        };
        if !matches!(
            tokenizer.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        ) {
            return Err("not the BERT pre-tokenizer".into());
        }
        let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
            return Err("not a WordPiece model".into());
        };
        if tokenizer.get_padding().is_some() {
            return Err("pads".into());
        }
        let vocab = model.get_vocab();
        let unk = *vocab
            .get(&model.unk_token)
            .ok_or("the unknown token is not in the vocabulary")?;
        let prefix = model.continuing_subword_prefix.as_str();
        let rest: HashMap<Box<str>, u32> = vocab
            .iter()
            .filter_map(|(piece, &id)| Some((piece.strip_prefix(prefix)?.into(), id)))
            .collect();
        let first: HashMap<Box<str>, u32> =
            vocab.into_iter().map(|(p, id)| (p.into(), id)).collect();
        let longest = |table: &HashMap<Box<str>, u32>| table.keys().map(|k| k.len()).max();
        // Without a post-processor the library (0.23) cuts a long prompt but reports no
        // overflow: left to it.
        let processor = tokenizer.get_post_processor().ok_or("no post-processor")?;
        let (before, after) = specials_around(processor)?;
        if before.len() + after.len() != processor.added_tokens(false) {
            return Err("special tokens miscounted".into());
        }
        let keep = match tokenizer.get_truncation() {
            None => usize::MAX,
            Some(t) => {
                let simple = t.direction == TruncationDirection::Right
                    && matches!(
                        t.strategy,
                        TruncationStrategy::LongestFirst | TruncationStrategy::OnlyFirst
                    );
                let keep = t.max_length.saturating_sub(before.len() + after.len());
                if !simple || keep == 0 {
                    return Err(format!("truncation {t:?}"));
                }
                keep
            }
        };
        let added = tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content.to_ascii_lowercase())
            .collect();
        Ok(Self {
            first_longest: longest(&first).unwrap_or(0),
            rest_longest: longest(&rest).unwrap_or(0),
            first,
            rest,
            unk,
            max_word: model.max_input_chars_per_word,
            lowercase,
            before,
            after,
            keep,
            added,
        })
    }

    /// The ids of `prompt` with the special tokens, cut at the truncation length, and
    /// whether it was cut; `None` when the prompt is not for the fast path (not ASCII, or
    /// holding an added token).
    pub fn tokenize(&self, prompt: &str) -> Option<(Vec<u32>, bool)> {
        if !prompt.is_ascii() {
            return None;
        }
        // The normalizer on ASCII: control characters dropped, tabs and line breaks made
        // spaces, letters lowercased (Chinese characters and accents cannot occur).
        let text: String = prompt
            .chars()
            .filter_map(|c| match c {
                '\t' | '\n' | '\r' => Some(' '),
                '\0'..='\x1f' | '\x7f' => None,
                _ if self.lowercase => Some(c.to_ascii_lowercase()),
                _ => Some(c),
            })
            .collect();
        let folded = prompt.to_ascii_lowercase();
        // The normalized text is lowercase already when the normalizer lowercases.
        let lowered = if self.lowercase {
            std::borrow::Cow::Borrowed(&text)
        } else {
            std::borrow::Cow::Owned(text.to_ascii_lowercase())
        };
        if self
            .added
            .iter()
            .any(|a| folded.contains(a.as_str()) || lowered.contains(a.as_str()))
        {
            return None;
        }
        let sequence = (text.len() / 2).min(self.keep.saturating_add(self.max_word));
        let mut ids = Vec::with_capacity(self.before.len() + sequence + self.after.len() + 2);
        ids.extend_from_slice(&self.before);
        // The pre-tokenizer: words end at spaces (dropped) and around each punctuation
        // character (a word of its own). Once a word ends past the truncation length the
        // rest cannot change the result (a word's pieces are kept or replaced together).
        let past = |ids: &Vec<u32>| ids.len() - self.before.len() > self.keep;
        'text: for chunk in text.split(' ') {
            let mut word_start = 0;
            for (i, b) in chunk.bytes().enumerate() {
                if b.is_ascii_punctuation() {
                    self.word(&chunk[word_start..i], &mut ids);
                    self.word(&chunk[i..=i], &mut ids);
                    word_start = i + 1;
                    if past(&ids) {
                        break 'text;
                    }
                }
            }
            self.word(&chunk[word_start..], &mut ids);
            if past(&ids) {
                break;
            }
        }
        let cut = past(&ids);
        if cut {
            ids.truncate(self.before.len() + self.keep);
        }
        ids.extend_from_slice(&self.after);
        Some((ids, cut))
    }

    /// WordPiece on one word, onto `ids`: the longest vocabulary piece from its start, then
    /// the longest continuation piece from where that ends, and so on; one unknown token
    /// instead for a word too long or with a stretch no piece matches.
    fn word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let mark = ids.len();
        let mut start = 0;
        while start < word.len() && word.len() <= self.max_word {
            let (table, longest) = if start == 0 {
                (&self.first, self.first_longest)
            } else {
                (&self.rest, self.rest_longest)
            };
            let Some((end, id)) = (start + 1..=word.len().min(start + longest))
                .rev()
                .find_map(|end| table.get(&word[start..end]).map(|&id| (end, id)))
            else {
                break;
            };
            ids.push(id);
            start = end;
        }
        if start < word.len() {
            ids.truncate(mark);
            ids.push(self.unk);
        }
    }
}

/// The ids of the special tokens a post-processor puts before and after a single
/// sequence, read from its serialised form (the library keeps them private): BERT's
/// `[CLS] … [SEP]`, or a template of special tokens around the one sequence `A`.
fn specials_around(processor: &impl serde::Serialize) -> Result<(Vec<u32>, Vec<u32>), String> {
    let json = serde_json::to_value(processor).map_err(|e| e.to_string())?;
    let id = |v: &serde_json::Value| v.get(1).and_then(serde_json::Value::as_u64);
    match json["type"].as_str() {
        Some("BertProcessing") => match (id(&json["cls"]), id(&json["sep"])) {
            (Some(cls), Some(sep)) => Ok((vec![cls as u32], vec![sep as u32])),
            _ => Err("BertProcessing without ids".into()),
        },
        Some("TemplateProcessing") => {
            let pieces = json["single"]
                .as_array()
                .ok_or("template without `single`")?;
            let (mut before, mut after) = (Vec::new(), Vec::new());
            let mut seen_sequence = false;
            for piece in pieces {
                if let Some(seq) = piece.get("Sequence") {
                    if seen_sequence || seq["id"] != "A" {
                        return Err(format!("template piece {piece}"));
                    }
                    seen_sequence = true;
                    continue;
                }
                let name = piece["SpecialToken"]["id"]
                    .as_str()
                    .ok_or_else(|| format!("template piece {piece}"))?;
                let ids = json["special_tokens"][name]["ids"]
                    .as_array()
                    .ok_or_else(|| format!("special token {name} without ids"))?
                    .iter()
                    .map(|v| v.as_u64().map(|v| v as u32))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| format!("special token {name}: ids not numbers"))?;
                if seen_sequence {
                    after.extend(ids);
                } else {
                    before.extend(ids);
                }
            }
            if !seen_sequence {
                return Err("template without its sequence".into());
            }
            Ok((before, after))
        }
        other => Err(format!("post-processor {other:?}")),
    }
}
