//! `make bench-tokenizer`: what the worker's tokenizing costs a prompt, against the Hugging
//! Face `tokenizers` library it stands in for, on the demo model's BERT WordPiece
//! tokenizer (window 128). Sets of prompts in several scripts; each set is tokenized by the
//! library and by the worker's path (the fast path, falling back to the library), in turn,
//! for five rounds; the table gives the median round's microseconds a prompt, the speed-up,
//! and how many of the set's prompts the fast path took; then the same with cold caches —
//! each of a set's first 32 prompts timed alone after 64 MB have been written through the
//! caches, as a serving worker tokenizes between forward passes that stream the model's
//! weights. Every prompt's ids are checked against the library's first. The last row is
//! the fast path's worst case, which bounds what the worker tokenizes on the task serving a
//! call (1 KiB of long words that end on a missing piece). Writes
//! `target/bench-tokenizer.md` and `docs/bench-tokenizer.svg`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::{calls_for, cpu_model, per_call, ratio_svg, root};
use inferencehub_worker::models::tokens::PromptTokenizer;
use serde_json::Value;

const ROUNDS: usize = 5;
/// Prompts of each set timed with cold caches (each after the evictor's pass).
const COLD_PROMPTS: usize = 32;

/// Caches emptied of the tokenizer's tables and code, as a forward pass leaves them on a
/// serving worker (it streams the model's weights, ≈ 90 MB for MiniLM): 64 MB written
/// through, a cache line at a time.
struct Evictor(Vec<u8>);

impl Evictor {
    fn new() -> Self {
        Self(vec![1; 64 << 20])
    }
    fn evict(&mut self) {
        for byte in self.0.iter_mut().step_by(64) {
            *byte = byte.wrapping_add(1);
        }
        std::hint::black_box(&self.0);
    }
}

/// Reviews and support messages written for this benchmark, beyond ASCII.
const ACCENTED: &[&str] = &[
    "Le service client a répondu très vite, merci beaucoup !",
    "La aplicación se cerró dos veces antes de guardar mis cambios.",
    "Die Lieferung kam pünktlich, aber die Verpackung war beschädigt.",
    "O café estava frio e a espera foi longa demais.",
    "Très déçu : l'écran s'éteint sans raison après une heure.",
    "¡Qué maravilla! Funciona exactamente como esperaba.",
    "Größere Dateien lassen sich jetzt ohne Fehler hochladen.",
    "Não recomendo, o suporte nunca respondeu às minhas mensagens.",
];
const CYRILLIC_GREEK: &[&str] = &[
    "Доставка пришла вовремя, всё работает отлично.",
    "Приложение зависает каждый раз при запуске.",
    "Очень доволен покупкой, рекомендую друзьям.",
    "Поддержка так и не ответила на моё письмо.",
    "Η εφαρμογή λειτουργεί άψογα, ευχαριστώ πολύ!",
    "Το προϊόν έφτασε χαλασμένο και κανείς δεν απάντησε.",
];
const CHINESE_JAPANESE: &[&str] = &[
    "我们今天去公园散步，天气很好。",
    "客服回复得很快，问题马上就解决了。",
    "这个应用每次打开都会崩溃，非常失望。",
    "包装破损了，但是东西还能用。",
    "配達は予定どおりに届きました。とても満足です。",
    "アプリが起動するたびに落ちてしまいます。",
];
/// Hangul, which the uncased tokenizer's accent stripping decomposes into its letters.
const KOREAN: &[&str] = &[
    "배송이 빨라서 정말 좋았어요.",
    "앱이 자꾸 멈춰서 너무 불편합니다.",
    "고객센터 답변이 친절하고 빨랐어요.",
];
const HINDI: &[&str] = &[
    "सेवा बहुत अच्छी थी, धन्यवाद।",
    "ऐप बार-बार बंद हो जाता है।",
    "डिलीवरी समय पर हुई और सामान ठीक था।",
];

struct Set {
    label: &'static str,
    /// The plot's label.
    short: &'static str,
    prompts: Vec<String>,
    tokenizer: usize,
}

fn main() {
    let path = root().join("models/sentiment/tokenizer.json");
    assert!(path.is_file(), "run `make models` first");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let serving = |json: &Value, window| {
        PromptTokenizer::new(json.to_string().parse().unwrap(), window).unwrap()
    };
    // The worst case wants words that run long and end on a missing piece: the vocabulary
    // without `##q`, and no window to stop early.
    let mut holed = json.clone();
    holed["model"]["vocab"]
        .as_object_mut()
        .unwrap()
        .remove("##q");
    let tokenizers = [serving(&json, 128), serving(&holed, 100_000)];
    let demo = inferencehub_devkit::demo_sentences();
    let owned = |set: &[&str]| set.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let worst_word = format!("a{}q ", "b".repeat(98));
    let sets = [
        Set {
            label: "demo set (ASCII)",
            short: "ASCII",
            prompts: demo.clone(),
            tokenizer: 0,
        },
        Set {
            label: "demo set, typographic quotes",
            short: "typographic",
            prompts: demo
                .iter()
                .map(|s| format!("“{}”", s.replace('\'', "’")))
                .collect(),
            tokenizer: 0,
        },
        Set {
            label: "accented Latin",
            short: "accented",
            prompts: owned(ACCENTED),
            tokenizer: 0,
        },
        Set {
            label: "Cyrillic and Greek",
            short: "Cyrillic, Greek",
            prompts: owned(CYRILLIC_GREEK),
            tokenizer: 0,
        },
        Set {
            label: "Chinese and Japanese",
            short: "CJK",
            prompts: owned(CHINESE_JAPANESE),
            tokenizer: 0,
        },
        Set {
            label: "Korean",
            short: "Korean",
            prompts: owned(KOREAN),
            tokenizer: 0,
        },
        Set {
            label: "Hindi",
            short: "Hindi",
            prompts: owned(HINDI),
            tokenizer: 0,
        },
        Set {
            label: "worst case, 1 KiB",
            short: "worst, 1 KiB",
            prompts: vec![worst_word.repeat(1024 / worst_word.len() + 1)[..1024].to_string()],
            tokenizer: 1,
        },
    ];
    for set in &sets {
        let tokenizer = &tokenizers[set.tokenizer];
        for prompt in &set.prompts {
            let library = tokenizer.library_tokenize(prompt).unwrap();
            assert_eq!(tokenizer.tokenize(prompt).unwrap(), library, "{prompt}");
        }
    }

    println!(
        "{}, {} cores; the sentiment model's tokenizer (BERT WordPiece, uncased); {ROUNDS} \
         rounds, the median\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // µs a prompt, per set and round: library and worker, with warm caches and cold.
    let mut rounds: Vec<Vec<[f64; 4]>> = vec![Vec::new(); sets.len()];
    let mut evictor = Evictor::new();
    for round in 1..=ROUNDS {
        eprintln!("round {round} of {ROUNDS}");
        for (set, times) in sets.iter().zip(&mut rounds) {
            let tokenizer = &tokenizers[set.tokenizer];
            let library = |p: &str| {
                std::hint::black_box(tokenizer.library_tokenize(p).unwrap());
            };
            let worker = |p: &str| {
                std::hint::black_box(tokenizer.tokenize(p).unwrap());
            };
            let warm = |f: &dyn Fn(&str)| {
                let pass = || set.prompts.iter().for_each(|p| f(p));
                let calls = calls_for(0.05, 3, 10_000, pass);
                per_call(calls, pass) * 1e6 / set.prompts.len() as f64
            };
            let mut cold = |f: &dyn Fn(&str)| {
                let prompts = &set.prompts[..set.prompts.len().min(COLD_PROMPTS)];
                let seconds: f64 = prompts
                    .iter()
                    .map(|p| {
                        evictor.evict();
                        let started = Instant::now();
                        f(p);
                        started.elapsed().as_secs_f64()
                    })
                    .sum();
                seconds * 1e6 / prompts.len() as f64
            };
            times.push([warm(&library), warm(&worker), cold(&library), cold(&worker)]);
        }
    }

    let mut table = String::from(
        "| prompts | count | bytes a prompt | fast path takes | library µs | worker µs | speed-up \
         | cold: library µs | cold: worker µs | cold: speed-up |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut groups = Vec::new();
    for (set, times) in sets.iter().zip(&rounds) {
        let tokenizer = &tokenizers[set.tokenizer];
        let median = |i: usize| {
            let mut v: Vec<f64> = times.iter().map(|t| t[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let range = |library: usize, worker: usize| {
            times
                .iter()
                .map(|t| t[library] / t[worker])
                .fold((f64::MAX, 0f64), |(a, b), r| (a.min(r), b.max(r)))
        };
        let (library, worker, cold_library, cold_worker) =
            (median(0), median(1), median(2), median(3));
        let ((low, high), (cold_low, cold_high)) = (range(0, 1), range(2, 3));
        let fast = set
            .prompts
            .iter()
            .filter(|p| tokenizer.fast_tokenize(p).is_some())
            .count();
        let bytes = set.prompts.iter().map(String::len).sum::<usize>() / set.prompts.len();
        table += &format!(
            "| {} | {} | {bytes} | {fast} of {} | {library:.2} | {worker:.2} | {:.1}× ({low:.1}–{high:.1}) \
             | {cold_library:.1} | {cold_worker:.1} | {:.1}× ({cold_low:.1}–{cold_high:.1}) |\n",
            set.label,
            set.prompts.len(),
            set.prompts.len(),
            library / worker,
            cold_library / cold_worker,
        );
        groups.push((
            set.short.to_string(),
            vec![library / worker, cold_library / cold_worker],
        ));
    }
    println!("{table}");
    std::fs::create_dir_all(root().join("target")).unwrap();
    std::fs::write(root().join("target/bench-tokenizer.md"), &table).unwrap();
    std::fs::write(
        root().join("docs/bench-tokenizer.svg"),
        ratio_svg(
            "Tokenizing a prompt: the worker's path, × the tokenizers library's speed",
            &groups,
            &[
                ("warm caches (library = 1.0)", "#4c72b0"),
                ("cold caches", "#dd8452"),
            ],
        ),
    )
    .unwrap();
    println!("table: target/bench-tokenizer.md, plot: docs/bench-tokenizer.svg");
}
