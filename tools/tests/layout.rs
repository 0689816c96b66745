//! The workspace's module graph has no cycles: within each library crate, no module reaches
//! (by `use`, a path in code, or a re-export) a module that reaches it back. A module's
//! declaration of its children (`mod x;`) is not a use; test modules are left out.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library crates: their `src` folders.
const CRATES: &[&str] = &[
    "proto/src",
    "functions/src",
    "gpu-worker/src",
    "tools/src",
    "tools/devkit/src",
    "tools/bench/src",
];

type Module = Vec<String>;

struct Source {
    module: Module,
    text: String,
    /// Modules declared inline (`mod pb { ... }`) in this file.
    inline: Vec<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file is: `lib.rs` -> [], `a.rs` and `a/mod.rs` -> [a], `a/b.rs` -> [a, b].
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("lib" | "mod")) {
        parts.pop();
    }
    parts
}

/// The text outside comments, string literals and test-only code.
fn code(text: &str) -> String {
    let mut text = text.to_string();
    // Test modules come last in a file (clippy holds that): cut them off.
    if let Some(i) = text.find("#[cfg(test)]\nmod tests {") {
        text.truncate(i);
    }
    text.lines()
        .map(|l| {
            let l = l.trim_start();
            if l.starts_with("//") { "" } else { l }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files declared as test-only modules (`#[cfg(test)] mod x;`) by `parent`.
fn test_children(parent: &str) -> Vec<String> {
    parent
        .split("#[cfg(test)]")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            let name = rest.strip_prefix("mod ")?.split(';').next()?;
            (!name.contains('{')).then(|| name.trim().to_string())
        })
        .collect()
}

/// Every path starting with `crate::`, `super::`, `self::` or one of `children::` (the
/// file's own child modules, which it names bare), with `use` groups expanded:
/// `use super::{a, b::{c, d}}` gives `super::a`, `super::b::c`, `super::b::d`; a child's
/// path is given as `self::child::...`.
fn paths(code: &str, children: &[String]) -> Vec<Vec<String>> {
    let mut roots: Vec<String> = ["crate", "super", "self"].map(String::from).to_vec();
    roots.extend(children.iter().cloned());
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        let root = roots.iter().find(|r| {
            let end = i + r.len();
            end + 2 <= chars.len()
                && chars[i..end].iter().copied().eq(r.chars())
                && chars[end] == ':'
                && chars[end + 1] == ':'
        });
        match root {
            Some(root) if boundary => {
                let (expanded, end) = expand(&chars, i);
                let is_child = !["crate", "super", "self"].contains(&root.as_str());
                out.extend(expanded.into_iter().map(|p| {
                    if is_child {
                        std::iter::once("self".to_string()).chain(p).collect()
                    } else {
                        p
                    }
                }));
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// The child modules `text` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

/// The paths of the (possibly grouped) path at `start`, and where it ends.
fn expand(chars: &[char], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    let mut i = start;
    let mut word = String::new();
    loop {
        let c = chars.get(i).copied().unwrap_or(';');
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            i += 1;
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            prefix.push(std::mem::take(&mut word));
            i += 2;
            if chars.get(i) == Some(&'{') {
                // A group: each member is a path of its own under the prefix.
                let mut members = Vec::new();
                i += 1;
                loop {
                    while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        i += 1;
                    }
                    match chars.get(i) {
                        Some('}') | None => {
                            i += 1;
                            break;
                        }
                        _ => {}
                    }
                    let (inner, end) = expand(chars, i);
                    members.extend(inner);
                    i = end;
                }
                let full = members
                    .into_iter()
                    .map(|m| prefix.iter().cloned().chain(m).collect())
                    .collect();
                return (full, i);
            }
        } else {
            if !word.is_empty() {
                prefix.push(word);
            }
            // `x as y`: the alias names nothing new.
            let rest: String = chars[i..chars.len().min(i + 4)].iter().collect();
            if rest == " as " {
                i += 4;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
            }
            return (vec![prefix], i);
        }
    }
}

/// The module `path` (as written in `from`) reaches: the deepest module it names.
fn resolve(from: &Module, path: &[String], modules: &BTreeMap<Module, Source>) -> Module {
    let mut base: Module = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.next().map(String::as_str) {
        Some("crate") => {}
        Some("self") => base = from.clone(),
        Some("super") => {
            base = from.clone();
            base.pop();
            // `a/b.rs` and `a/b/mod.rs` are module [a, b]; their `super` is [a].
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                base.pop();
            }
        }
        _ => return Vec::new(),
    }
    for segment in segments {
        let mut next = base.clone();
        next.push(segment.clone());
        let inline = modules
            .get(&base)
            .is_some_and(|s| s.inline.contains(segment));
        if modules.contains_key(&next) || inline {
            base = next;
        } else {
            break;
        }
    }
    base
}

fn cycles_in(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // Binaries are crates of their own; test-only modules may reach anything.
    let mut test_only = BTreeSet::new();
    let mut modules = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        if rel.starts_with("bin") || rel == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let module = module_of(src, file);
        for child in test_children(&text) {
            let mut m = module.clone();
            m.push(child);
            test_only.insert(m);
        }
        let inline = text
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                let name = l.strip_prefix("mod ")?.strip_suffix(" {")?;
                Some(name.to_string())
            })
            .collect();
        modules.insert(
            module.clone(),
            Source {
                module,
                text,
                inline,
            },
        );
    }
    modules.retain(|m, _| !test_only.iter().any(|t| m.starts_with(t)));
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for source in modules.values() {
        for path in paths(&code(&source.text), &children(&source.text)) {
            let to = resolve(&source.module, &path, &modules);
            if to != source.module {
                edges.entry(source.module.clone()).or_default().insert(to);
            }
        }
    }
    // Every cycle shows as a pair of modules that reach each other.
    let reach = |from: &Module| -> BTreeSet<Module> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let name = |m: &Module| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    let mut found = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if reach(to).contains(from) && from < to {
                found.push(format!(
                    "{}: {} <-> {}",
                    src.display(),
                    name(from),
                    name(to)
                ));
            }
        }
    }
    found
}

#[test]
fn no_two_modules_reach_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cycles: Vec<String> = CRATES
        .iter()
        .flat_map(|c| cycles_in(&root.join(c)))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_and_reads_groups() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod x;\nuse crate::b::Thing;\n").unwrap();
    std::fs::write(
        src.join("a/x.rs"),
        "use super::super::b::{self, Other as O};\n",
    )
    .unwrap();
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::a::g(); }\n").unwrap();
    let found = cycles_in(src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("a <-> b"), "{found:?}");
    let groups = paths("use super::{a, b::{c, d as e}};", &[]);
    assert_eq!(
        groups,
        [
            vec!["super", "a"],
            vec!["super", "b", "c"],
            vec!["super", "b", "d"]
        ]
    );
    // Without the way back, no cycle.
    std::fs::write(src.join("b.rs"), "pub fn f() {}\n").unwrap();
    assert!(cycles_in(src).is_empty());
    // A parent that names its child bare, and the child that reaches back.
    std::fs::write(src.join("a/mod.rs"), "pub mod x;\npub use x::Thing;\n").unwrap();
    std::fs::write(src.join("a/x.rs"), "use super::Other;\n").unwrap();
    let found = cycles_in(src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("a <-> a::x"), "{found:?}");
}
