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
use std::time::{Duration, Instant};

use crate::batching::{BatchConfig, Batcher};
use crate::metrics::Metrics;
use crate::models::repository::{self, Entry};
use crate::models::{LoadOptions, load_entry};
use crate::service::{ModelSet, ModelStore, ServedModel, ServedVersions, Unavailable};

/// One served version and the files it came from.
#[derive(Clone)]
pub struct Loaded {
    entry: Entry,
    fingerprint: String,
    model: Arc<ServedModel>,
}

/// Loads repository versions into served models.
pub struct Registry {
    root: PathBuf,
    opts: LoadOptions,
    batch: BatchConfig,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// A registry over the repository at `root`.
    pub fn new(
        root: PathBuf,
        opts: LoadOptions,
        batch: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            root,
            opts,
            batch,
            metrics,
        }
    }

    /// Loads, warms up and starts one version; `fingerprint` is its files' when the caller
    /// has read them already.
    async fn load(&self, entry: &Entry, fingerprint: Option<String>) -> anyhow::Result<Loaded> {
        let (entry, opts) = (entry.clone(), self.opts.clone());
        let (entry, fingerprint, model) = tokio::task::spawn_blocking(move || {
            let fingerprint = match fingerprint {
                Some(f) => f,
                None => repository::fingerprint(&entry.dir)?,
            };
            let started = Instant::now();
            let mut model = load_entry(&entry, &opts)?;
            model.warm_up()?;
            tracing::info!(
                model = %model.info.name,
                version = %model.info.version,
                architecture = %model.info.architecture,
                load_ms = started.elapsed().as_millis() as u64,
                "model loaded"
            );
            anyhow::Ok((entry, fingerprint, model))
        })
        .await??;
        let batcher = Batcher::start(&model.info.name, model.model, self.batch, &self.metrics)?;
        Ok(Loaded {
            entry,
            fingerprint,
            model: Arc::new(ServedModel {
                info: model.info,
                tokenizer: model.tokenizer,
                batcher,
            }),
        })
    }

    /// Every version the repository serves; the first that fails to load fails it all.
    pub async fn load_all(&self) -> anyhow::Result<Vec<Loaded>> {
        let root = self.root.clone();
        let entries = tokio::task::spawn_blocking(move || repository::scan(&root)).await??;
        let mut loaded = Vec::with_capacity(entries.len());
        for entry in &entries {
            loaded.push(self.load(entry, None).await?);
        }
        Ok(loaded)
    }

    /// One read of the repository against what is served: unchanged versions stay, new and
    /// changed ones load (a failure keeps the served one, if any, and is recorded in
    /// `failed` with the files' fingerprint so it is not retried until they change),
    /// removed ones go.
    pub async fn refresh(
        &self,
        current: &[Loaded],
        failed: &mut Failures,
        only: Option<&str>,
        unloaded: &BTreeSet<String>,
    ) -> anyhow::Result<Vec<Loaded>> {
        let root = self.root.clone();
        let entries = tokio::task::spawn_blocking(move || repository::scan(&root)).await??;
        let mut next = Vec::with_capacity(entries.len());
        let seen: Vec<(String, Option<String>)> = entries
            .iter()
            .map(|e| (e.name.clone(), e.version.clone()))
            .collect();
        for entry in entries {
            if unloaded.contains(&entry.name) {
                continue;
            }
            let key = (entry.name.clone(), entry.version.clone());
            let served = current
                .iter()
                .find(|l| l.entry.name == entry.name && l.entry.version == entry.version);
            // Another model than the one asked for (LoadModel) stays as it is.
            if only.is_some_and(|n| n != entry.name) {
                next.extend(served.cloned());
                continue;
            }
            let dir = entry.dir.clone();
            let fingerprint = tokio::task::spawn_blocking(move || repository::fingerprint(&dir))
                .await?
                .unwrap_or_default();
            if let Some(served) = served.filter(|s| s.fingerprint == fingerprint) {
                next.push(Loaded {
                    entry,
                    ..served.clone()
                });
                failed.remove(&key);
                continue;
            }
            let tried = failed.get(&key).is_some_and(|(f, _)| *f == fingerprint);
            if !tried {
                match self.load(&entry, Some(fingerprint.clone())).await {
                    Ok(loaded) => {
                        failed.remove(&key);
                        next.push(loaded);
                        continue;
                    }
                    Err(e) => {
                        let reason = format!("{e:#}");
                        tracing::error!(model = %entry.name, version = ?entry.version, error = %reason, "a version failed to load; the served ones stay");
                        failed.insert(key, (fingerprint, reason));
                    }
                }
            }
            if let Some(served) = served {
                next.push(served.clone());
            }
        }
        // A model none of whose selected versions loaded (the policy's latest one is broken)
        // keeps serving what it served, while those folders exist.
        for old in current {
            if !next.iter().any(|l| l.entry.name == old.entry.name)
                && !unloaded.contains(&old.entry.name)
                && old.entry.dir.is_dir()
            {
                next.push(old.clone());
            }
        }
        // Failures of versions no longer in the repository are forgotten.
        failed.retain(|key, _| seen.contains(key));
        Ok(next)
    }
}

/// The served set of `loaded`: per model its versions, the default the one the repository
/// marks (else the newest that loaded).
pub fn set_of(loaded: &[Loaded]) -> ModelSet {
    let mut by_name: BTreeMap<String, Vec<&Loaded>> = BTreeMap::new();
    for l in loaded {
        by_name.entry(l.entry.name.clone()).or_default().push(l);
    }
    by_name
        .into_iter()
        .filter_map(|(name, versions)| {
            let default = versions
                .iter()
                .find(|l| l.entry.default)
                .or(versions.last())?
                .model
                .clone();
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
    /// Serves `loaded` (the start's load) into `store`.
    pub fn new(registry: Registry, store: Arc<ModelStore>, loaded: Vec<Loaded>) -> Self {
        let state = State {
            loaded,
            failed: Failures::new(),
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

    /// Serves model `name` again (after [`Control::unload`]) from its folder as it is now.
    pub async fn load(&self, name: &str) -> anyhow::Result<()> {
        self.state.lock().await.unloaded.remove(name);
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
