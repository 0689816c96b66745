//! The serving tokenizer's fast path for ASCII prompts against the Hugging Face library it
//! stands in for: the same ids and the same "cut" flag on the demo sentences, on tens of
//! thousands of generated prompts (words of the vocabulary in any case, punctuation,
//! control characters, the tokenizer's own special tokens, words too long or with no
//! matching piece, prompts past the truncation length, non-ASCII text), and on variants of
//! the pipeline it models; and no fast path for a pipeline it does not model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use inferencehub_worker::models::tokens::PromptTokenizer;
use serde_json::Value;
use tokenizers::Tokenizer;

fn tokenizer_json(model: &str) -> Value {
    let path = common::demo_models().join(model).join("tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn serving(json: &Value, max_tokens: usize) -> PromptTokenizer {
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    PromptTokenizer::new(tokenizer, max_tokens).unwrap()
}

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `count` prompts built from the vocabulary, punctuation, whitespace and control
/// characters, special tokens and odd pieces.
fn generated(json: &Value, count: usize, seed: u64) -> Vec<String> {
    let vocab: Vec<&str> = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let specials: Vec<&str> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].as_str().unwrap())
        .collect();
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let mut prompt = String::new();
            for _ in 0..rng.below(40) {
                match rng.below(20) {
                    0..=7 => {
                        let word = vocab[rng.below(vocab.len())];
                        match rng.below(4) {
                            0 => prompt.push_str(&word.to_uppercase()),
                            1 => prompt.push_str(&word.replace("##", "")),
                            _ => prompt.push_str(word),
                        }
                    }
                    8..=9 => prompt.push(char::from(
                        b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"[rng.below(32)],
                    )),
                    10 => prompt.push(char::from(rng.below(128) as u8)),
                    11 => prompt.push(
                        ['\t', '\n', '\r', '\x0b', '\x0c', '\0', '\x7f', '\x1b'][rng.below(8)],
                    ),
                    12 => {
                        let special = specials[rng.below(specials.len())];
                        match rng.below(3) {
                            0 => prompt.push_str(special),
                            1 => prompt.push_str(&special.to_lowercase()),
                            _ => prompt.push_str(&special.replace('[', "[ ")),
                        }
                    }
                    13 => prompt.push_str(&"x".repeat(95 + rng.below(10))),
                    14 => prompt.push_str(["qzxv", "zzqj", "xkcdq", "jjjjjjz"][rng.below(4)]),
                    15 => prompt.push_str(
                        ["café", "naïve", "東京", "😀", "Ünïcödé", "\u{a0}"][rng.below(6)],
                    ),
                    _ => {}
                }
                if rng.below(3) > 0 {
                    prompt.push(' ');
                }
            }
            prompt
        })
        .collect()
}

fn demo_sentences() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/data/sentiment.tsv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t').map(|(_, s)| s.to_string()))
        .collect()
}

/// Asserts the fast path and the library agree on every prompt; returns how many prompts
/// the fast path answered itself and how many were cut.
fn agree(tokenizer: &PromptTokenizer, prompts: &[String]) -> (usize, usize) {
    assert!(tokenizer.has_fast_path());
    let (mut fast, mut cut) = (0, 0);
    for prompt in prompts {
        let library = tokenizer.library_tokenize(prompt).unwrap();
        let served = tokenizer.tokenize(prompt).unwrap();
        assert_eq!(served, library, "prompt {prompt:?}");
        fast += usize::from(prompt.is_ascii());
        cut += usize::from(library.1);
    }
    (fast, cut)
}

#[test]
fn the_fast_path_gives_the_librarys_ids_for_the_demo_tokenizers() {
    for model in ["sentiment", "minilm"] {
        let json = tokenizer_json(model);
        let tokenizer = serving(&json, 128);
        let sentences = demo_sentences();
        let (fast, _) = agree(&tokenizer, &sentences);
        assert!(
            fast * 10 >= sentences.len() * 9,
            "{fast} of {}",
            sentences.len()
        );
        let prompts = generated(&json, 6_000, 0x5eed_0001 + model.len() as u64);
        let (fast, cut) = agree(&tokenizer, &prompts);
        // The generator reaches the cases that matter: ASCII prompts, and prompts cut.
        assert!(
            fast > 1_000 && cut > 100,
            "{model}: {fast} ASCII, {cut} cut"
        );
    }
}

#[test]
fn every_vocabulary_entry_tokenizes_as_the_library_does() {
    let json = tokenizer_json("sentiment");
    let tokenizer = serving(&json, 512);
    let mut words: Vec<&str> = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.strip_prefix("##").unwrap_or(k))
        .collect();
    // The longest first, so that the longest entries are surely among them.
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    let prompts: Vec<String> = words.chunks(8).map(|c| c.join(" ")).collect();
    let (fast, _) = agree(&tokenizer, &prompts);
    assert!(
        fast * 10 >= prompts.len() * 9,
        "{fast} of {}",
        prompts.len()
    );
}

#[test]
fn the_fast_path_follows_the_pipelines_settings() {
    let base = tokenizer_json("sentiment");
    let mut variants = Vec::new();
    // Case kept.
    let mut cased = base.clone();
    cased["normalizer"]["lowercase"] = Value::Bool(false);
    variants.push(("cased", cased, 128));
    // BERT's own post-processor instead of the template.
    let mut bert = base.clone();
    bert["post_processor"] = serde_json::json!({
        "type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]
    });
    variants.push(("BertProcessing", bert, 128));
    // Short words and a short window.
    let mut short = base.clone();
    short["model"]["max_input_chars_per_word"] = serde_json::json!(6);
    variants.push(("short words, 8 tokens", short, 8));
    // Pieces missing, so that words fail late and turn into one unknown token — also
    // where the window ends.
    let mut holed = base.clone();
    for piece in ["##q", "##z", "##j", "##x"] {
        holed["model"]["vocab"]
            .as_object_mut()
            .unwrap()
            .remove(piece);
    }
    variants.push(("pieces missing, 16 tokens", holed, 16));
    for (i, (name, json, max_tokens)) in variants.iter().enumerate() {
        let tokenizer = serving(json, *max_tokens);
        assert!(tokenizer.has_fast_path(), "{name}");
        let mut prompts = demo_sentences();
        prompts.extend(generated(json, 2_000, 0xfeed + i as u64));
        agree(&tokenizer, &prompts);
    }
}

#[test]
fn a_pipeline_it_does_not_model_has_no_fast_path_and_still_tokenizes() {
    let base = tokenizer_json("sentiment");
    let mut others = Vec::new();
    let mut whitespace = base.clone();
    whitespace["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    others.push(whitespace);
    let mut unclean = base.clone();
    unclean["normalizer"]["clean_text"] = Value::Bool(false);
    others.push(unclean);
    // Without a post-processor the library cuts a long prompt but reports no overflow.
    let mut bare = base.clone();
    bare["post_processor"] = Value::Null;
    others.push(bare);
    let mut lower_only = base.clone();
    lower_only["normalizer"] = serde_json::json!({"type": "Lowercase"});
    others.push(lower_only);
    for json in &others {
        let tokenizer = serving(json, 128);
        assert!(!tokenizer.has_fast_path(), "{json:#}");
        let (ids, cut) = tokenizer.tokenize("Hello, world!").unwrap();
        assert_eq!(
            (ids, cut),
            tokenizer.library_tokenize("Hello, world!").unwrap()
        );
    }
}

#[test]
fn a_call_is_tokenized_in_place_only_when_quick() {
    let json = tokenizer_json("sentiment");
    let fast = serving(&json, 128);
    let mut whitespace = json.clone();
    whitespace["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    let library = serving(&whitespace, 128);
    let ascii = |n: usize| vec!["word ".repeat(n / 5)];
    let accented = |n: usize| vec!["é".repeat(n / 2)];
    // The fast path: up to 1 KiB of ASCII, in one prompt or spread over several.
    assert!(fast.is_quick(&ascii(1020)));
    assert!(fast.is_quick(&vec!["word ".repeat(20); 10]));
    assert!(!fast.is_quick(&ascii(1030)));
    // The library: up to 128 bytes.
    assert!(fast.is_quick(&accented(128)));
    assert!(!fast.is_quick(&accented(130)));
    assert!(library.is_quick(&ascii(125)));
    assert!(!library.is_quick(&ascii(300)));
}
