//! The model repository: a folder of models, one subfolder per model named as the API
//! names it. A model folder is either the model itself (`name/<model files>`: one version,
//! named by the digest of its files) or versions side by side (`name/<version>/<model
//! files>`, with nothing beside them but an optional `model.json` holding the version
//! policy). Versions are ordered as integers where both are, else by name; the policy picks
//! which are served (`latest` n, the default one: the n newest that load, so a broken new
//! version leaves the one before it serving; `all`; `specific`), and the newest served is
//! the default a request without a version gets. A model folder that cannot be read as one
//! (a bad policy file, say) is reported on its own; the others are served.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The policy file at the root of a versioned model folder.
pub const POLICY_FILE: &str = "model.json";

/// The canary split at the root of a versioned model folder:
/// `{"weights": {"1": 90, "2": 10}}`, over served versions.
pub const ROUTING_FILE: &str = "routing.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Routing {
    weights: std::collections::BTreeMap<String, u32>,
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The `num_versions` latest.
    Latest {
        /// How many.
        num_versions: usize,
    },
    /// Every version.
    All {},
    /// The versions named.
    Specific {
        /// Their names.
        versions: Vec<String>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest { num_versions: 1 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfig {
    #[serde(default)]
    version_policy: VersionPolicy,
}

/// One model version to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The model's name.
    pub name: String,
    /// The version's folder name; `None` for an unversioned model folder.
    pub version: Option<String>,
    /// Where its files are.
    pub dir: PathBuf,
    /// With the `latest` policy, how many of the model's versions to serve: the newest that
    /// load, and every version of the folder is a candidate. `None`: serve every entry.
    pub latest: Option<usize>,
    /// Its weight in the model's canary split (0: none, or no split).
    pub weight: u32,
}

/// The folders inside `dir` that are not hidden, sorted by name.
fn subfolders(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `Path::is_dir` follows symlinks, so a folder may link to shared storage.
        if entry.path().is_dir() && !name.starts_with('.') {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a model folder holds versions: subfolders, and no file but the policy.
fn is_versioned(dir: &Path) -> anyhow::Result<bool> {
    let mut has_folders = false;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            has_folders = true;
        } else if name != POLICY_FILE && name != ROUTING_FILE {
            return Ok(false);
        }
    }
    Ok(has_folders)
}

/// The order of version names: integers by value, before other names by name.
fn version_key(name: &str) -> (u8, u64, String) {
    match name.parse::<u64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) => (1, 0, name.to_string()),
    }
}

/// Version folders: name and path.
type Versions = Vec<(String, PathBuf)>;

/// The versions of a versioned model folder its policy serves (with `latest` n, every
/// version, and n), oldest first.
fn served_versions(dir: &Path) -> anyhow::Result<(Versions, Option<usize>)> {
    let mut versions = subfolders(dir)?;
    versions.sort_by_key(|(name, _)| version_key(name));
    let policy_path = dir.join(POLICY_FILE);
    let config: ModelConfig = if policy_path.is_file() {
        serde_json::from_str(&std::fs::read_to_string(&policy_path)?)
            .with_context(|| format!("parsing {}", policy_path.display()))?
    } else {
        ModelConfig::default()
    };
    Ok(match config.version_policy {
        VersionPolicy::All {} => (versions, None),
        VersionPolicy::Latest { num_versions: 0 } => {
            bail!(
                "{}: latest.num_versions must be at least 1",
                policy_path.display()
            )
        }
        VersionPolicy::Latest { num_versions } => (versions, Some(num_versions)),
        VersionPolicy::Specific { versions: wanted } => {
            if let Some(missing) = wanted
                .iter()
                .find(|w| !versions.iter().any(|(v, _)| v == *w))
            {
                bail!(
                    "{}: version {missing:?} is not a folder of {}",
                    policy_path.display(),
                    dir.display()
                );
            }
            let versions = versions
                .into_iter()
                .filter(|(v, _)| wanted.contains(v))
                .collect();
            (versions, None)
        }
    })
}

/// The canary weights of a versioned model folder (empty without `routing.json`): every
/// version named must be served, and the weights must not all be 0.
fn routing(
    dir: &Path,
    versions: &[(String, PathBuf)],
) -> anyhow::Result<std::collections::BTreeMap<String, u32>> {
    let path = dir.join(ROUTING_FILE);
    if !path.is_file() {
        return Ok(Default::default());
    }
    let routing: Routing = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    if let Some(v) = routing
        .weights
        .keys()
        .find(|v| !versions.iter().any(|(served, _)| served == *v))
    {
        bail!("{}: version {v:?} is not served", path.display());
    }
    if routing.weights.values().all(|&w| w == 0) {
        bail!("{}: every weight is 0", path.display());
    }
    Ok(routing.weights)
}

/// What a read of the repository found: the versions to serve, and the model folders that
/// could not be read as models, with why.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every version to serve (or, with `latest`, to choose from), by model name then
    /// version order.
    pub entries: Vec<Entry>,
    /// Model folders that are not valid models: name and reason.
    pub errors: Vec<(String, String)>,
}

/// The versions of one model folder.
fn scan_model(name: &str, dir: &Path) -> anyhow::Result<Vec<Entry>> {
    if !is_versioned(dir)? {
        return Ok(vec![Entry {
            name: name.to_string(),
            version: None,
            dir: dir.to_path_buf(),
            latest: None,
            weight: 0,
        }]);
    }
    let (versions, latest) = served_versions(dir)?;
    if versions.is_empty() {
        bail!("{}: no version folder is served", dir.display());
    }
    let weights = routing(dir, &versions)?;
    Ok(versions
        .into_iter()
        .map(|(version, dir)| Entry {
            name: name.to_string(),
            weight: weights.get(&version).copied().unwrap_or(0),
            version: Some(version),
            dir,
            latest,
        })
        .collect())
}

/// Reads the repository at `root`: an error only when `root` itself cannot be read.
pub fn scan(root: &Path) -> anyhow::Result<Scan> {
    let models =
        subfolders(root).with_context(|| format!("reading model dir {}", root.display()))?;
    let mut scan = Scan::default();
    for (name, dir) in models {
        match scan_model(&name, &dir) {
            Ok(entries) => scan.entries.extend(entries),
            Err(e) => scan.errors.push((name, format!("{e:#}"))),
        }
    }
    Ok(scan)
}

/// Every file under `dir` (every level, links followed): path, size and modification time.
fn files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, u64, u128)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                files.push((path, meta.len(), modified));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What one walk over a version folder's files tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// A cheap fingerprint of the files (names, sizes and modification times): what
    /// `--model-control poll` compares between reads.
    pub fingerprint: String,
    /// Their bytes: what loading the version is expected to hold in memory.
    pub bytes: u64,
}

/// The [`Snapshot`] of the files under `dir`.
pub fn snapshot(dir: &Path) -> anyhow::Result<Snapshot> {
    use std::hash::{Hash, Hasher};
    let files = files(dir)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    Ok(Snapshot {
        fingerprint: format!("{:016x}", hasher.finish()),
        bytes: files.iter().map(|(_, len, _)| len).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(layout: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for path in layout {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(
                &path,
                if path.ends_with("model.json") {
                    ""
                } else {
                    "x"
                },
            )
            .unwrap();
        }
        dir
    }

    fn served(root: &Path) -> Vec<(String, Option<String>, Option<usize>)> {
        let scan = scan(root).unwrap();
        assert!(scan.errors.is_empty(), "{:?}", scan.errors);
        scan.entries
            .into_iter()
            .map(|e| (e.name, e.version, e.latest))
            .collect()
    }

    /// Why model `name` could not be read.
    fn error(root: &Path, name: &str) -> String {
        let scan = scan(root).unwrap();
        assert!(scan.entries.iter().all(|e| e.name != name));
        scan.errors
            .into_iter()
            .find(|(n, _)| n == name)
            .expect("an error")
            .1
    }

    #[test]
    fn versions_sit_beside_each_other_and_the_policy_picks() {
        let dir = repo(&[
            "plain/model.onnx",
            "forest/2/model.onnx",
            "forest/10/model.onnx",
            "forest/9/model.onnx",
        ]);
        // Integers order by value; by default the newest that loads is served, so every
        // version is a candidate.
        assert_eq!(
            served(dir.path()),
            [
                ("forest".into(), Some("2".into()), Some(1)),
                ("forest".into(), Some("9".into()), Some(1)),
                ("forest".into(), Some("10".into()), Some(1)),
                ("plain".into(), None, None)
            ]
        );
        let policy =
            |text: &str| std::fs::write(dir.path().join("forest/model.json"), text).unwrap();
        policy(r#"{"version_policy": {"all": {}}}"#);
        let versions: Vec<_> = served(dir.path()).into_iter().filter_map(|e| e.1).collect();
        assert_eq!(versions, ["2", "9", "10"]);
        policy(r#"{"version_policy": {"latest": {"num_versions": 2}}}"#);
        assert_eq!(
            served(dir.path())[2],
            ("forest".into(), Some("10".into()), Some(2))
        );
        policy(r#"{"version_policy": {"specific": {"versions": ["2"]}}}"#);
        assert_eq!(
            served(dir.path())[..2],
            [
                ("forest".into(), Some("2".into()), None),
                ("plain".into(), None, None)
            ]
        );
        // A bad policy is that model's error; the others are still read.
        policy(r#"{"version_policy": {"specific": {"versions": ["7"]}}}"#);
        assert!(error(dir.path(), "forest").contains("\"7\""));
        policy(r#"{"version_policy": {"newest": {}}}"#);
        assert!(error(dir.path(), "forest").contains("model.json"));
        policy(r#"{"version_policy": {"latest": {"num_versions": 0}}}"#);
        assert!(error(dir.path(), "forest").contains("at least 1"));
        assert_eq!(scan(dir.path()).unwrap().entries.len(), 1);

        // A canary split over served versions.
        policy(r#"{"version_policy": {"all": {}}}"#);
        let routing =
            |text: &str| std::fs::write(dir.path().join("forest/routing.json"), text).unwrap();
        routing(r#"{"weights": {"10": 90, "9": 10}}"#);
        let weights: Vec<(Option<String>, u32)> = scan(dir.path())
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.version, e.weight))
            .collect();
        assert_eq!(
            weights[..3],
            [
                (Some("2".into()), 0),
                (Some("9".into()), 10),
                (Some("10".into()), 90)
            ]
        );
        routing(r#"{"weights": {"11": 50}}"#);
        assert!(error(dir.path(), "forest").contains("\"11\""));
        routing(r#"{"weights": {"10": 0}}"#);
        assert!(error(dir.path(), "forest").contains("every weight is 0"));
    }

    #[test]
    fn a_model_folder_with_files_and_subfolders_is_one_version() {
        // A sentence-transformers folder: files beside `1_Pooling/`.
        let dir = repo(&["minilm/config.json", "minilm/1_Pooling/config.json"]);
        assert_eq!(served(dir.path()), [("minilm".into(), None, None)]);
        // An empty repository reads as empty (a polled one fills later); a missing one fails.
        assert!(served(tempfile::tempdir().unwrap().path()).is_empty());
        assert!(scan(&dir.path().join("absent")).is_err());
    }
}
