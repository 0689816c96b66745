//! Reads model folders. The layout decides the family: `model.onnx` -> an ONNX graph (with
//! `tokenizer.json` beside it, a transformer export answering text: a classifier, or an
//! embedding model with `modules.json`); `modules.json` -> a sentence-embedding model;
//! `tabular.json` -> a tabular MLP; `head.safetensors` -> a sentence encoder with a linear
//! head; otherwise a transformers `*ForSequenceClassification` checkpoint.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::model::{LoadOptions, LoadedModel};
use super::{embedding, onnx, repository, tabular, text};

/// Loads one model folder, named `name` (see the module docs for the layouts).
pub fn load_model(dir: &Path, name: &str, opts: &LoadOptions) -> anyhow::Result<LoadedModel> {
    let version = version_of(dir)?;
    let loaded = if dir.join(onnx::MODEL_FILE).is_file() {
        onnx::load(dir, name, version, opts)
    } else if embedding::is_sentence_folder(dir) && !dir.join(text::HEAD_FILE).is_file() {
        embedding::load(dir, name, version, opts)
    } else if dir.join(tabular::CONFIG_FILE).is_file() {
        tabular::load(dir, name, version, opts)
    } else if dir.join(text::HEAD_FILE).is_file() {
        text::load_sentence_classifier(dir, name, version, opts)
    } else if dir.join("config.json").is_file() {
        text::load_sequence_classifier(dir, name, version, opts)
    } else {
        bail!(
            "{} holds no model: expected {}, {}, or config.json + tokenizer.json + \
             model.safetensors",
            dir.display(),
            onnx::MODEL_FILE,
            tabular::CONFIG_FILE
        )
    };
    loaded.with_context(|| format!("loading model {name:?} from {}", dir.display()))
}

/// Loads one version of the repository: named after its model, its version the version
/// folder's name (else the digest of its files), the digest beside it.
pub fn load_entry(entry: &repository::Entry, opts: &LoadOptions) -> anyhow::Result<LoadedModel> {
    let mut model = load_model(&entry.dir, &entry.name, opts)?;
    model.info.digest = model.info.version.clone();
    if let Some(version) = &entry.version {
        model.info.version = version.clone();
    }
    Ok(model)
}

/// The model version: the first 12 hex digits of a SHA-256 over the folder's files (names
/// and contents, in name order), so any change to weights, labels or tokenizer shows.
pub fn version_of(dir: &Path) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        let mut file = std::fs::File::open(&path)?;
        std::io::copy(&mut file, &mut hasher)?;
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
}
