//! The serving tokenizer's fast path against the Hugging Face library it stands in for:
//! the same ids and the same "cut" flag on the demo sentences, on tens of
//! thousands of generated prompts (words of the vocabulary in any case, punctuation,
//! control characters, the tokenizer's own special tokens, words too long or with no
//! matching piece, prompts past the truncation length, text beyond ASCII that the
//! normalizer treats specially, random code points), and on variants of
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

/// Text the BERT normalizer treats specially: accents precomposed and combining, letters
/// whose lowercase or decomposition is longer (İ, ẞ, Å as the ångström sign), Chinese
/// characters (spaced) and their compatibility forms, kana and Hangul (not spaced),
/// typographic punctuation, whitespace and format characters beyond ASCII, a spacing
/// combining mark that accent stripping keeps (U+1D165, which the fast path leaves to the
/// library; two of them in the order the library's decomposition reverses), an Indic
/// cluster with a vowel sign, emoji, a ligature; long words of two-byte letters.
#[rustfmt::skip]
const UNICODE: &[&str] = &[
    "café", "naïve", "Ünïcödé", "a\u{301}", "e\u{301}\u{327}", "İstanbul", "ΣΟΦΟΣ", "straße",
    "ẞ", "\u{212b}", "\u{2126}", "Привет", "東京", "\u{f900}", "日本語です", "한국어",
    "“quoted”", "it’s", "—", "…", "¿qué?", "«»", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}",
    "\u{200b}", "\u{feff}", "\u{fffd}", "\u{e000}", "\u{1d165}", "\u{1d16d}\u{1d165}",
    "क्षि", "😀", "👍🏽", "ﬁ",
    // Words within the length limit in characters but not in bytes, and past it.
    "приветприветприветприветприветприветприветприветприветпривет",
    "дддддддддддддддддддддддддддддддддддддддддддддддддддддддддддд",
    "ддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддддд",
];

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
            // Half the prompts draw on text beyond ASCII.
            let unicode = rng.below(2) == 0;
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
                    15 if unicode => prompt.push_str(UNICODE[rng.below(UNICODE.len())]),
                    16 if unicode => {
                        // Any scalar value: unassigned, private use, surrogates skipped.
                        if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                            prompt.push(c);
                        }
                    }
                    17 if unicode => {
                        // Latin, Greek, Cyrillic, and the general punctuation block.
                        let c = [0x80 + rng.below(0x580), 0x2000 + rng.below(0x70)][rng.below(2)];
                        prompt.push(char::from_u32(c as u32).unwrap());
                    }
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

/// What [`agree`] saw: prompts the fast path answered (and of them, how many were not
/// ASCII), and prompts the library cut.
#[derive(Debug, Default)]
struct Seen {
    fast: usize,
    fast_unicode: usize,
    cut: usize,
}

/// Asserts the fast path and the library agree on every prompt the fast path answers, and
/// that the served ids are the library's for every prompt.
fn agree(tokenizer: &PromptTokenizer, prompts: &[String]) -> Seen {
    assert!(tokenizer.has_fast_path());
    let mut seen = Seen::default();
    for prompt in prompts {
        let library = tokenizer.library_tokenize(prompt).unwrap();
        if let Some(fast) = tokenizer.fast_tokenize(prompt) {
            assert_eq!(fast, library, "prompt {prompt:?}");
            seen.fast += 1;
            seen.fast_unicode += usize::from(!prompt.is_ascii());
        }
        assert_eq!(
            tokenizer.tokenize(prompt).unwrap(),
            library,
            "prompt {prompt:?}"
        );
        seen.cut += usize::from(library.1);
    }
    seen
}

#[test]
fn the_fast_path_gives_the_librarys_ids_for_the_demo_tokenizers() {
    for model in ["sentiment", "minilm"] {
        let json = tokenizer_json(model);
        let tokenizer = serving(&json, 128);
        let sentences = inferencehub_devkit::demo_sentences();
        let seen = agree(&tokenizer, &sentences);
        assert_eq!(seen.fast, sentences.len(), "{seen:?}");
        let prompts = generated(&json, 6_000, 0x5eed_0001 + model.len() as u64);
        let seen = agree(&tokenizer, &prompts);
        // The generator reaches the cases that matter: the fast path on ASCII and on other
        // text, the library for what the fast path leaves it, and prompts cut.
        assert!(
            seen.fast - seen.fast_unicode > 1_000
                && seen.fast_unicode > 1_000
                && seen.fast < prompts.len()
                && seen.cut > 100,
            "{model}: {seen:?} of {}",
            prompts.len()
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
    let seen = agree(&tokenizer, &prompts);
    assert!(
        seen.fast * 10 >= prompts.len() * 9,
        "{seen:?} of {}",
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
    // Lowercased with accents kept, cased with accents stripped, Chinese not spaced.
    let mut accents_kept = base.clone();
    accents_kept["normalizer"]["strip_accents"] = Value::Bool(false);
    variants.push(("accents kept", accents_kept, 128));
    let mut cased_stripped = base.clone();
    cased_stripped["normalizer"]["lowercase"] = Value::Bool(false);
    cased_stripped["normalizer"]["strip_accents"] = Value::Bool(true);
    variants.push(("cased, accents stripped", cased_stripped, 128));
    let mut unspaced = base.clone();
    unspaced["normalizer"]["handle_chinese_chars"] = Value::Bool(false);
    variants.push(("Chinese not spaced", unspaced, 128));
    // A piece of two spacing combining marks, which the library's decomposition puts in
    // canonical order (U+1D16D after U+1D165): a prompt with them in the other order is
    // the library's, not the fast path's.
    let mut marks = base.clone();
    let vocab = marks["model"]["vocab"].as_object_mut().unwrap();
    vocab.insert("\u{1d165}\u{1d16d}".into(), serde_json::json!(vocab.len()));
    variants.push(("two kept marks in a piece", marks, 128));
    // An added token matched in the normalized text, which normalizing changes beyond
    // ASCII case: "Ünï" is found as "uni" (so a prompt with "uni" in any form is the
    // library's).
    let mut normalized_token = base.clone();
    normalized_token["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 30522, "content": "Ünï", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": false
        }));
    variants.push(("an added token normalized", normalized_token, 128));
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
        let mut prompts = inferencehub_devkit::demo_sentences();
        prompts.extend(["uni", "a UNI b", "Ünï", "xuniy"].map(String::from));
        // Each special text as a word of its own, in both cases.
        prompts.extend(
            UNICODE
                .iter()
                .map(|u| format!("{u} a {u}, {}.", u.to_uppercase())),
        );
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

/// `tokenizers` 0.23 cuts a long prompt for a tokenizer without a post-processor but
/// reports no overflow; the worker's "cut" flag (which a caller's refusal of truncation
/// rests on) must still say so, and must not say so for a prompt that fits exactly.
#[test]
fn a_prompt_cut_without_a_post_processor_is_reported_cut() {
    let mut bare = tokenizer_json("sentiment");
    bare["post_processor"] = Value::Null;
    let whole = serving(&bare, 512);
    let window = serving(&bare, 8);
    for words in [1, 7, 8, 9, 40] {
        let prompt = vec!["good"; words].join(" ");
        let (all, all_cut) = whole.tokenize(&prompt).unwrap();
        assert_eq!((all.len(), all_cut), (words, false), "{prompt}");
        let (ids, cut) = window.tokenize(&prompt).unwrap();
        assert_eq!(ids, all[..words.min(8)], "{prompt}");
        assert_eq!(cut, words > 8, "{prompt}");
    }
    // With the post-processor the library's own report stands: [CLS] and [SEP] count.
    let full = serving(&tokenizer_json("sentiment"), 8);
    assert!(!full.tokenize(&["good"; 6].join(" ")).unwrap().1);
    assert!(full.tokenize(&["good"; 7].join(" ")).unwrap().1);
}

#[test]
fn a_call_is_tokenized_in_place_only_when_quick() {
    let json = tokenizer_json("sentiment");
    let fast = serving(&json, 128);
    let mut whitespace = json.clone();
    whitespace["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    let library = serving(&whitespace, 128);
    let words = |word: &str, bytes: usize| vec![word.repeat(bytes / word.len())];
    let in_place = |tokenizer: &PromptTokenizer, prompts: &[String]| {
        let done = tokenizer.tokenize_in_place(prompts)?.unwrap();
        // What is done in place is what the blocking pool would have done.
        for (prompt, tokens) in prompts.iter().zip(&done) {
            assert_eq!(
                *tokens,
                tokenizer.library_tokenize(prompt).unwrap(),
                "{prompt}"
            );
        }
        Some(done.len())
    };
    // The fast path: up to 1 KiB, ASCII or not, in one prompt or spread over several.
    assert_eq!(in_place(&fast, &words("word ", 1020)), Some(1));
    assert_eq!(in_place(&fast, &words("thé “ok” ", 1020)), Some(1));
    assert_eq!(in_place(&fast, &vec!["word ".repeat(20); 10]), Some(10));
    assert_eq!(in_place(&fast, &words("word ", 1030)), None);
    // Not what the fast path leaves to the library (an added token, a kept combining
    // mark), beyond 128 bytes.
    assert_eq!(in_place(&fast, &words("[SEP] ", 600)), None);
    assert_eq!(in_place(&fast, &words("x\u{1d165} ", 600)), None);
    assert_eq!(in_place(&fast, &words("[SEP] ", 120)), Some(1));
    // The library: up to 128 bytes.
    assert_eq!(in_place(&library, &words("word ", 125)), Some(1));
    assert_eq!(in_place(&library, &words("word ", 300)), None);
}
