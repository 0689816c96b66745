//! The served set from the model repository: every version loaded and warmed up on the
//! blocking pool, each behind its own batcher; and, with `--model-control poll`, the
//! repository read again every interval. A new or changed version loads beside the served
//! ones and replaces them only once it answers; a removed one leaves the set, finishes what
//! it has queued and unloads ([`ServedModel`]'s drop); one that fails to load is listed
//! UNAVAILABLE with the loader's message while the previous one (if any) keeps serving, and
//! is not tried again until its files change. The worker never stops for it. With
//! `--model-control explicit` the admin RPCs ([`crate::admin`]) do the same for one model
//! on demand, and unload models.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::batching::{BatchConfig, Batcher};
use crate::metrics::Metrics;
use crate::mirror::{ModelRepo, S3Mirror};
use crate::models::repository::{self, Entry, Snapshot};
use crate::models::{LoadOptions, load_entry};
use crate::service::{ModelSet, ModelStore, Resident, ServedModel, ServedVersions, Unavailable};

/// One served version and the files it came from.
#[derive(Clone)]
pub struct Loaded {
    entry: Entry,
    fingerprint: String,
    model: Arc<ServedModel>,
}

/// Loads repository versions into served models.
pub struct Registry {
    /// The folder read: the repository, or the local mirror of an S3 one.
    root: PathBuf,
    /// The S3 repository mirrored into `root`, synced before every read.
    mirror: Option<S3Mirror>,
    opts: LoadOptions,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
    /// What the served versions may hold in all (`--memory-budget`).
    budget: Option<u64>,
    /// What they hold now.
    resident: Arc<AtomicU64>,
}

impl Registry {
    /// A registry over the repository `repo`.
    pub async fn new(
        repo: &ModelRepo,
        opts: LoadOptions,
        batch: BatchConfig,
        metrics: Arc<Metrics>,
        budget: Option<u64>,
    ) -> anyhow::Result<Self> {
        let (root, mirror) = match repo {
            ModelRepo::Local(root) => (root.clone(), None),
            ModelRepo::S3 { bucket, prefix } => {
                let mirror = S3Mirror::new(bucket, prefix).await?;
                (mirror.dir().to_path_buf(), Some(mirror))
            }
        };
        Ok(Self {
            root,
            mirror,
            opts,
            batch,
            metrics,
            budget,
            resident: Arc::default(),
        })
    }

    /// Refuses a version of `bytes` that would take the served total over the budget, or
    /// that is larger than the device's free memory.
    fn check_memory(&self, bytes: u64) -> anyhow::Result<()> {
        let held = self.resident.load(Ordering::SeqCst);
        if let Some(budget) = self.budget
            && held.saturating_add(bytes) > budget
        {
            anyhow::bail!(
                "not loaded: its files take {bytes} bytes and the served versions hold \
                 {held} of the {budget}-byte --memory-budget"
            );
        }
        if let Some(free) = crate::models::device::free_bytes(&self.opts.device)?
            && bytes > free
        {
            anyhow::bail!(
                "not loaded: its files take {bytes} bytes and the device has {free} free"
            );
        }
        Ok(())
    }

    /// Loads, warms up and starts one version whose files are `files`.
    async fn load(&self, entry: &Entry, files: Snapshot) -> anyhow::Result<Loaded> {
        let bytes = files.bytes;
        self.check_memory(bytes)?;
        let (entry, opts) = (entry.clone(), self.opts.clone());
        let (entry, model) = on_load_thread(move || {
            let started = Instant::now();
            let mut model = load_entry(&entry, &opts)?;
            model.warm_up()?;
            tracing::info!(
                model = %model.info.name,
                version = %model.info.version,
                architecture = %model.info.architecture,
                load_ms = started.elapsed().as_millis() as u64,
                tokenizer = model.tokenizer.as_deref().map_or("none", |t| {
                    if t.has_fast_path() { "fast path" } else { "library" }
                }),
                "model loaded"
            );
            anyhow::Ok((entry, model))
        })
        .await?;
        let mut info = model.info;
        info.resident_bytes = bytes;
        let batcher = Batcher::start(
            &info.name,
            &info.version,
            model.model,
            self.batch,
            &self.metrics,
        )?;
        let resident = Resident::claim(
            bytes,
            &self.resident,
            &self.metrics,
            &info.name,
            &info.version,
        );
        Ok(Loaded {
            entry,
            fingerprint: files.fingerprint,
            model: Arc::new(ServedModel {
                info,
                tokenizer: model.tokenizer,
                batcher,
                resident,
            }),
        })
    }

    /// Every version the repository serves, for `--model-control none`: a model folder
    /// that cannot be read, a version that fails to load, or an empty repository fails it
    /// all (the worker stops, as nothing would ever change what it serves).
    pub async fn load_all(&self) -> anyhow::Result<Vec<Loaded>> {
        let mut failed = Failures::new();
        let loaded = self
            .refresh(&[], &mut failed, None, &BTreeSet::new())
            .await?;
        if let Some(((name, version), (_, reason))) = failed.into_iter().next() {
            match version {
                Some(v) => anyhow::bail!("model {name:?} version {v:?}: {reason}"),
                None => anyhow::bail!("model {name:?}: {reason}"),
            }
        }
        if loaded.is_empty() {
            anyhow::bail!("the model repository has no model folders");
        }
        Ok(loaded)
    }

    /// One read of the repository against what is served. Per model, its versions newest
    /// first: unchanged served ones stay, new and changed ones load (a failure is recorded
    /// in `failed` with the files' fingerprint, and not retried until they change), until
    /// the policy's count is served (`latest` n: the n newest that load; otherwise every
    /// version). A model none of whose versions could be served, or whose folder cannot be
    /// read as a model, keeps what it served while those folders exist. Removed versions go.
    pub async fn refresh(
        &self,
        current: &[Loaded],
        failed: &mut Failures,
        only: Option<&str>,
        unloaded: &BTreeSet<String>,
    ) -> anyhow::Result<Vec<Loaded>> {
        if let Some(mirror) = &self.mirror {
            mirror.sync().await?;
        }
        let root = self.root.clone();
        let scan = tokio::task::spawn_blocking(move || repository::scan(&root)).await??;
        let mut seen: Vec<(String, Option<String>)> = scan
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.version.clone()))
            .collect();
        let mut models: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for entry in scan.entries {
            models.entry(entry.name.clone()).or_default().push(entry);
        }
        for (name, reason) in scan.errors {
            tracing::error!(model = %name, error = %reason, "a model folder cannot be read; what it served stays");
            seen.push((name.clone(), None));
            failed.insert((name.clone(), None), (String::new(), reason));
            models.entry(name).or_default();
        }
        let mut next = Vec::new();
        for (name, versions) in models {
            if unloaded.contains(&name) {
                continue;
            }
            let served_now = current.iter().filter(|l| l.entry.name == name);
            // Another model than the one asked for (LoadModel) stays as it is.
            if only.is_some_and(|n| n != name) {
                next.extend(served_now.cloned());
                continue;
            }
            let wanted = versions
                .first()
                .and_then(|e| e.latest)
                .unwrap_or(versions.len());
            let mut chosen = Vec::new();
            for entry in versions.into_iter().rev() {
                if chosen.len() == wanted {
                    break;
                }
                if let Some(loaded) = self.version(current, failed, entry).await? {
                    chosen.push(loaded);
                }
            }
            if chosen.is_empty() {
                chosen.extend(served_now.filter(|l| l.entry.dir.is_dir()).cloned());
            } else {
                chosen.reverse();
            }
            next.extend(chosen);
        }
        // Failures of versions no longer in the repository are forgotten.
        failed.retain(|key, _| seen.contains(key));
        Ok(next)
    }

    /// One version of the repository: as served when its files are unchanged, else loaded;
    /// `None` when it fails to load (now, or before with the same files).
    async fn version(
        &self,
        current: &[Loaded],
        failed: &mut Failures,
        entry: Entry,
    ) -> anyhow::Result<Option<Loaded>> {
        let key = (entry.name.clone(), entry.version.clone());
        let dir = entry.dir.clone();
        let files = tokio::task::spawn_blocking(move || repository::snapshot(&dir))
            .await?
            .unwrap_or_default();
        let fingerprint = files.fingerprint.clone();
        let served = current
            .iter()
            .find(|l| l.entry.name == entry.name && l.entry.version == entry.version);
        if let Some(served) = served.filter(|s| s.fingerprint == fingerprint) {
            failed.remove(&key);
            return Ok(Some(Loaded {
                entry,
                ..served.clone()
            }));
        }
        if failed.get(&key).is_some_and(|(f, _)| *f == fingerprint) {
            return Ok(None);
        }
        match self.load(&entry, files).await {
            Ok(loaded) => {
                failed.remove(&key);
                Ok(Some(loaded))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(model = %entry.name, version = ?entry.version, error = %reason, "a version failed to load; the served ones stay");
                failed.insert(key, (fingerprint, reason));
                Ok(None)
            }
        }
    }
}

/// The served set of `loaded`: per model its versions, oldest first; the default is the
/// newest.
pub fn set_of(loaded: &[Loaded]) -> ModelSet {
    let mut by_name: BTreeMap<String, Vec<&Loaded>> = BTreeMap::new();
    for l in loaded {
        by_name.entry(l.entry.name.clone()).or_default().push(l);
    }
    by_name
        .into_iter()
        .filter_map(|(name, versions)| {
            let default = versions.last()?.model.clone();
            let weights = versions
                .iter()
                .filter(|l| l.entry.weight > 0)
                .map(|l| (l.model.info.version.clone(), l.entry.weight))
                .collect();
            let versions = versions
                .iter()
                .map(|l| (l.model.info.version.clone(), l.model.clone()))
                .collect();
            Some((
                name,
                ServedVersions {
                    default,
                    versions,
                    weights,
                },
            ))
        })
        .collect()
}

/// Versions that failed to load, by model and version: their files' fingerprint and why.
pub type Failures = BTreeMap<(String, Option<String>), (String, String)>;

/// Serves `loaded` and the failures in `store`.
pub fn publish(store: &ModelStore, loaded: &[Loaded], failed: &Failures) {
    store.replace(set_of(loaded));
    store.set_unavailable(
        failed
            .iter()
            .map(|((name, version), (_, reason))| Unavailable {
                name: name.clone(),
                version: version.clone().unwrap_or_default(),
                reason: reason.clone(),
            })
            .collect(),
    );
}

/// What is served and what failed, behind one lock: the poll loop and the admin RPCs
/// change it one at a time.
struct State {
    loaded: Vec<Loaded>,
    failed: Failures,
    unloaded: BTreeSet<String>,
}

/// Follows the repository for the worker: every poll (`--model-control poll`) or on the
/// admin RPCs' demand (`explicit`).
pub struct Control {
    registry: Registry,
    store: Arc<ModelStore>,
    state: tokio::sync::Mutex<State>,
}

impl Control {
    /// Serves `loaded` (the start's load, and what failed in it) into `store`.
    pub fn new(
        registry: Registry,
        store: Arc<ModelStore>,
        loaded: Vec<Loaded>,
        failed: Failures,
    ) -> Self {
        let state = State {
            loaded,
            failed,
            unloaded: BTreeSet::new(),
        };
        publish(&store, &state.loaded, &state.failed);
        Self {
            registry,
            store,
            state: tokio::sync::Mutex::new(state),
        }
    }

    /// Reads the repository again (only model `only`'s folder when given) and serves what
    /// changed.
    pub async fn refresh(&self, only: Option<&str>) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let State {
            loaded,
            failed,
            unloaded,
        } = &mut *state;
        let next = self
            .registry
            .refresh(loaded, failed, only, unloaded)
            .await?;
        let changed = next.len() != loaded.len()
            || next
                .iter()
                .zip(loaded.iter())
                .any(|(a, b)| !Arc::ptr_eq(&a.model, &b.model));
        *loaded = next;
        publish(&self.store, loaded, failed);
        if changed {
            let served: Vec<String> = loaded
                .iter()
                .map(|l| format!("{}:{}", l.model.info.name, l.model.info.version))
                .collect();
            tracing::info!(?served, "model repository changed");
        }
        Ok(())
    }

    /// Serves model `name` again (after [`Control::unload`]) from its folder as it is now;
    /// versions that failed before are tried again (memory may have been freed since).
    pub async fn load(&self, name: &str) -> anyhow::Result<()> {
        {
            let mut state = self.state.lock().await;
            state.unloaded.remove(name);
            state.failed.retain(|(n, _), _| n != name);
        }
        self.refresh(Some(name)).await
    }

    /// Stops serving model `name`: its versions leave the set, finish their queues and
    /// unload. Whether it was served.
    pub async fn unload(&self, name: &str) -> bool {
        let mut state = self.state.lock().await;
        let served = state.loaded.iter().any(|l| l.entry.name == name);
        state.unloaded.insert(name.to_string());
        state.loaded.retain(|l| l.entry.name != name);
        state.failed.retain(|(n, _), _| n != name);
        publish(&self.store, &state.loaded, &state.failed);
        tracing::info!(model = name, "model unloaded");
        served
    }

    /// The models unloaded by [`Control::unload`].
    pub async fn unloaded(&self) -> Vec<String> {
        self.state.lock().await.unloaded.iter().cloned().collect()
    }
}

/// Reads the repository again every `interval` and serves what changed, forever.
pub async fn poll(control: Arc<Control>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = control.refresh(None).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "reading the model repository failed; serving what was loaded"
            );
        }
    }
}

/// Stack of the threads models load on. ONNX Runtime builds a tree ensemble's trees
/// recursively: with 1.31, a chain of 2,048 branches overflows a 2 MiB stack (tokio's
/// blocking threads), which kills the process. Trees deeper than
/// [`crate::models::onnx::graph::MAX_TREE_DEPTH`] are refused before that, and this stack
/// leaves a wide margin over what the limit needs (reserved, touched only as used).
const LOAD_STACK_BYTES: usize = 64 << 20;

/// Runs `load` on a thread of its own with [`LOAD_STACK_BYTES`] of stack.
async fn on_load_thread<T: Send + 'static>(
    load: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("model-load".into())
        .stack_size(LOAD_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(load());
        })
        .map_err(|e| anyhow::anyhow!("starting a model-loading thread: {e}"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the model-loading thread stopped (a panic while loading)"))?
}
