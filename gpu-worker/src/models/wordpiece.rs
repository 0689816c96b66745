//! A fast path for the BERT tokenizer: the same ids as the Hugging Face pipeline it is
//! built from (`BertNormalizer` → `BertPreTokenizer` → `WordPiece` → the special tokens
//! around the sequence → truncation), without its per-character bookkeeping.
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
//! do all the work), and the prompt must hold none of the tokenizer's added tokens (in any
//! case). Each character is normalized on its own, with the library's own tables (the
//! `unicode_categories` and `unicode-normalization-alignments` crates it uses, and std's
//! whitespace and lowercasing): control and format characters dropped, whitespace made a
//! space, spaces around Chinese characters, accents stripped (canonical decomposition, the
//! non-spacing marks dropped), lowercasing. The one step that is not per character —
//! the decomposition's reordering of combining marks — cannot change the result when every
//! mark it could move is dropped; a prompt with a combining mark that is kept (a spacing
//! mark with a combining class, as the musical symbols' stems and dots; Indic vowel signs
//! have none) goes to the library. ASCII prompts skip the tables altogether, and the
//! two-byte characters (Latin beyond ASCII, Greek, Cyrillic, Hebrew, Arabic …) take their
//! normalized forms from a table built at load by the same steps.

use ahash::AHashMap as HashMap;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    Model, NormalizedString, Normalizer, PostProcessor, Tokenizer, TruncationDirection,
    TruncationStrategy,
};
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::char::{canonical_combining_class, decompose_canonical};

/// A vocabulary piece, held in the table's slot when it fits (24 bytes; every piece of the
/// BERT vocabularies does): a lookup reads no other memory, which matters when the tables
/// are cold — between forward passes, which stream the model's weights through the caches
/// (`make bench-tokenizer`'s cold columns: 1–23 % less time a prompt than with the pieces
/// on the heap, two runs of each in turn).
type Piece = compact_str::CompactString;

/// The BERT pipeline of one tokenizer.
pub struct FastWordPiece {
    /// The vocabulary, for a word's first piece.
    first: HashMap<Piece, u32>,
    /// The continuation pieces, keyed without their prefix (`##ing` as `ing`).
    rest: HashMap<Piece, u32>,
    /// The longest key of each table, in bytes: no longer stretch is looked up.
    first_longest: usize,
    rest_longest: usize,
    unk: u32,
    /// Longer words are one unknown token.
    max_word: usize,
    /// What the normalizer does to a character.
    steps: Steps,
    /// The special tokens before and after the sequence.
    before: Vec<u32>,
    after: Vec<u32>,
    /// Most sequence tokens kept (the truncation length less the special tokens).
    keep: usize,
    /// The added tokens' contents, as written and normalized, ASCII-lowercased: a prompt
    /// holding one (in any case) is the library's.
    added: Vec<String>,
    /// The two-byte UTF-8 characters (U+0080 to U+07FF, index `c - 0x80`): each one's
    /// normalized text (`None`: a kept combining mark), and which are punctuation — worked
    /// out once from the same steps, instead of eight table searches a character.
    two_byte: Vec<Option<Piece>>,
    two_byte_punctuation: Vec<u64>,
}

impl std::fmt::Debug for FastWordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastWordPiece")
            .field("vocabulary", &self.first.len())
            .field("steps", &self.steps)
            .field("before", &self.before)
            .field("after", &self.after)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl FastWordPiece {
    /// The fast path for `tokenizer`, or why it has none (its pipeline is not the one
    /// modelled here).
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<Self, String> {
        let (normalizer, steps) = match tokenizer.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(n)) if n.clean_text => (
                n,
                Steps {
                    lowercase: n.lowercase,
                    chinese: n.handle_chinese_chars,
                    strip_accents: n.strip_accents.unwrap_or(n.lowercase),
                },
            ),
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
        let rest: HashMap<Piece, u32> = vocab
            .iter()
            .filter_map(|(piece, &id)| Some((piece.strip_prefix(prefix)?.into(), id)))
            .collect();
        let first: HashMap<Piece, u32> = vocab.into_iter().map(|(p, id)| (p.into(), id)).collect();
        let longest = |table: &HashMap<Piece, u32>| table.keys().map(|k| k.len()).max();
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
        // Each added token as written and as the normalizer makes it (the library matches
        // tokens marked `normalized` in the normalized text).
        let mut added = Vec::new();
        for token in tokenizer.get_added_tokens_decoder().into_values() {
            let mut normalized = NormalizedString::from(token.content.as_str());
            normalizer
                .normalize(&mut normalized)
                .map_err(|e| format!("normalizing {:?}: {e}", token.content))?;
            added.push(normalized.get().to_ascii_lowercase());
            added.push(token.content.to_ascii_lowercase());
        }
        added.sort();
        added.dedup();
        // Every character is a scalar value in this range: index `c - 0x80` is `c`'s.
        let two_byte: Vec<char> = (0x80..0x800).filter_map(char::from_u32).collect();
        Ok(Self {
            first_longest: longest(&first).unwrap_or(0),
            rest_longest: longest(&rest).unwrap_or(0),
            first,
            rest,
            unk,
            max_word: model.max_input_chars_per_word,
            steps,
            before,
            after,
            keep,
            added,
            two_byte: two_byte
                .iter()
                .map(|&c| {
                    let mut text = String::new();
                    steps
                        .normalize_char(c, &mut text)
                        .map(|()| Piece::from(text))
                })
                .collect(),
            two_byte_punctuation: two_byte
                .chunks(64)
                .map(|chunk| {
                    (chunk.iter().enumerate())
                        .filter(|(_, c)| c.is_punctuation())
                        .fold(0u64, |bits, (i, _)| bits | 1 << i)
                })
                .collect(),
        })
    }

    /// The ids of `prompt` with the special tokens, cut at the truncation length, and
    /// whether it was cut; `None` when the prompt is not for the fast path (holding an
    /// added token, or a combining mark the normalizer would keep).
    pub fn tokenize(&self, prompt: &str) -> Option<(Vec<u32>, bool)> {
        let text = self.normalize(prompt)?;
        let folded = prompt.to_ascii_lowercase();
        // The normalized text is lowercase already when the normalizer lowercases.
        let lowered = if self.steps.lowercase {
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
        // The pre-tokenizer: words end at whitespace (dropped) and around each punctuation
        // character (a word of its own). Once a word ends past the truncation length the
        // rest cannot change the result (a word's pieces are kept or replaced together).
        let past = |ids: &Vec<u32>| ids.len() - self.before.len() > self.keep;
        let mut word_start = 0;
        for (i, c) in text.char_indices() {
            let punctuation = c.is_ascii_punctuation() || (!c.is_ascii() && self.is_punctuation(c));
            if punctuation || c.is_whitespace() {
                self.word(&text[word_start..i], &mut ids);
                let next = i + c.len_utf8();
                if punctuation {
                    self.word(&text[i..next], &mut ids);
                }
                word_start = next;
                if past(&ids) {
                    break;
                }
            }
        }
        if !past(&ids) {
            self.word(&text[word_start..], &mut ids);
        }
        let cut = past(&ids);
        if cut {
            ids.truncate(self.before.len() + self.keep);
        }
        ids.extend_from_slice(&self.after);
        Some((ids, cut))
    }

    /// The normalizer's text for `prompt`, character by character; `None` for a prompt
    /// with a combining mark that the accent stripping would keep (where the library's
    /// reordering of marks could matter).
    fn normalize(&self, prompt: &str) -> Option<String> {
        let mut text = String::with_capacity(prompt.len() + 2);
        for c in prompt.chars() {
            if c.is_ascii() {
                // Nothing to decompose; control characters are C0 and DEL.
                match c {
                    '\t' | '\n' | '\r' => text.push(' '),
                    '\0'..='\x1f' | '\x7f' => {}
                    _ if self.steps.lowercase => text.push(c.to_ascii_lowercase()),
                    _ => text.push(c),
                }
            } else if let Some(folded) = self.two_byte.get(c as usize - 0x80) {
                // Latin, Greek, Cyrillic, Hebrew, Arabic …: the character's normalized
                // form, worked out at load (`None`: the prompt is the library's).
                text.push_str(folded.as_deref()?);
            } else {
                self.steps.normalize_char(c, &mut text)?;
            }
        }
        Some(text)
    }

    /// Whether non-ASCII `c` is punctuation (a word of its own).
    fn is_punctuation(&self, c: char) -> bool {
        let i = c as usize - 0x80;
        match self.two_byte_punctuation.get(i / 64) {
            Some(bits) => bits >> (i % 64) & 1 == 1,
            None => c.is_punctuation(),
        }
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
        // The limit counts characters; a word no longer in bytes is within it.
        let short = word.len() <= self.max_word || word.chars().count() <= self.max_word;
        while start < word.len() && short {
            let (table, longest) = if start == 0 {
                (&self.first, self.first_longest)
            } else {
                (&self.rest, self.rest_longest)
            };
            let Some((end, id)) = (start + 1..=word.len().min(start + longest))
                .rev()
                .filter(|&end| word.is_char_boundary(end))
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

/// The `BertNormalizer` settings that act on a character beyond ASCII.
#[derive(Debug, Clone, Copy)]
struct Steps {
    lowercase: bool,
    /// Spaces put around Chinese characters.
    chinese: bool,
    /// Accents stripped (by default, when lowercasing).
    strip_accents: bool,
}

impl Steps {
    /// The normalizer's text for non-ASCII `c`, onto `text`; `None` for a combining mark that
    /// the accent stripping would keep.
    fn normalize_char(&self, c: char, text: &mut String) -> Option<()> {
        if c == '\u{fffd}' || c.is_other() {
            // Control, format and private-use characters (and the replacement one).
        } else if c.is_whitespace() {
            text.push(' ');
        } else if self.chinese && is_chinese(c) {
            text.push(' ');
            self.fold(c, text)?;
            text.push(' ');
        } else {
            self.fold(c, text)?;
        }
        Some(())
    }

    /// `c` with its accents stripped and lowercased, as the normalizer has them, onto
    /// `text`.
    fn fold(&self, c: char, text: &mut String) -> Option<()> {
        if !self.strip_accents {
            self.lower(c, text);
            return Some(());
        }
        let mut kept_mark = false;
        decompose_canonical(c, |d| {
            if d.is_mark_nonspacing() {
                return;
            }
            kept_mark |= canonical_combining_class(d) != 0;
            self.lower(d, text);
        });
        (!kept_mark).then_some(())
    }

    fn lower(&self, c: char, text: &mut String) {
        if self.lowercase {
            text.extend(c.to_lowercase());
        } else {
            text.push(c);
        }
    }
}

/// The normalizer's Chinese characters: the CJK Unified Ideographs blocks and their
/// compatibility forms (not Japanese kana or Korean Hangul, which are written with spaces).
fn is_chinese(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
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
