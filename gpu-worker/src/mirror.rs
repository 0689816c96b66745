//! Model repositories in S3 (`--model-dir s3://bucket/prefix`): the prefix is mirrored into
//! a local folder, and the worker reads that folder as it reads a local repository. Each
//! sync lists the prefix and fetches only the objects whose ETag changed (new files get a
//! new modification time, so a changed version's fingerprint changes and it reloads);
//! objects no longer listed are deleted, with the folders they leave empty. A file is
//! written beside its place and renamed over it, so a version that is loaded keeps the
//! bytes it loaded. Keys that would leave the mirror (`..`, absolute, backslashes) are
//! skipped with a warning.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

/// Where a model repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRepo {
    /// A local folder.
    Local(PathBuf),
    /// A prefix of an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix: the repository's root, without a trailing `/` (empty: the
        /// whole bucket).
        prefix: String,
    },
}

impl std::str::FromStr for ModelRepo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix("s3://") else {
            return Ok(Self::Local(PathBuf::from(s)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{s:?}: no bucket named (s3://bucket/prefix)"));
        }
        Ok(Self::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for ModelRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// At most this many objects under one prefix: a repository is models, not a data lake.
const MAX_OBJECTS: usize = 100_000;

/// The local path of object `key` under `prefix`, if it is a file inside the mirror.
fn relative(prefix: &str, key: &str) -> Option<PathBuf> {
    let rest = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    // Folder markers (`name/1/`) hold nothing.
    if rest.is_empty() || rest.ends_with('/') || rest.contains('\\') {
        return None;
    }
    let path = PathBuf::from(rest);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(path)
}

/// An S3 prefix mirrored into a local folder.
pub struct S3Mirror {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    dir: tempfile::TempDir,
    /// The ETag of every mirrored file, by its path under the mirror.
    etags: tokio::sync::Mutex<BTreeMap<PathBuf, String>>,
}

impl S3Mirror {
    /// A mirror of `s3://bucket/prefix` in a new temporary folder (removed on drop), with
    /// the AWS SDK's configuration from the environment (`AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL` for an S3-compatible server, which is then addressed path-style).
    pub async fn new(bucket: &str, prefix: &str) -> anyhow::Result<Self> {
        let sdk = aws_config::from_env().load().await;
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some();
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .build();
        let dir = tempfile::Builder::new()
            .prefix("inferencehub-s3-models-")
            .tempdir()
            .context("creating the S3 repository's local mirror")?;
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            dir,
            etags: Default::default(),
        })
    }

    /// The local folder the repository is mirrored into.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every object under the prefix: key and ETag.
    async fn list(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_prefix((!self.prefix.is_empty()).then(|| format!("{}/", self.prefix)))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                anyhow::anyhow!(
                    "listing s3://{}/{}: {}",
                    self.bucket,
                    self.prefix,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
            for object in page.contents() {
                if let (Some(key), Some(etag)) = (object.key(), object.e_tag()) {
                    objects.push((key.to_string(), etag.to_string()));
                }
            }
            anyhow::ensure!(
                objects.len() <= MAX_OBJECTS,
                "s3://{}/{} holds more than {MAX_OBJECTS} objects",
                self.bucket,
                self.prefix
            );
        }
        Ok(objects)
    }

    /// Fetches object `key` into `path` (written beside it, then renamed over it).
    async fn fetch(&self, key: &str, path: &Path) -> anyhow::Result<()> {
        let parent = path.parent().unwrap_or(self.dir.path());
        tokio::fs::create_dir_all(parent).await?;
        let mut object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "fetching s3://{}/{key}: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            })?;
        let partial = parent.join(format!(".incoming-{}", uuid::Uuid::new_v4()));
        let written = async {
            let mut file = tokio::fs::File::create(&partial).await?;
            while let Some(bytes) = object.body.try_next().await? {
                file.write_all(&bytes).await?;
            }
            file.flush().await?;
            tokio::fs::rename(&partial, path).await?;
            anyhow::Ok(())
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written.with_context(|| format!("writing s3://{}/{key}", self.bucket))
    }

    /// Brings the mirror up to date with the prefix; whether anything changed.
    pub async fn sync(&self) -> anyhow::Result<bool> {
        let listed = self.list().await?;
        let mut etags = self.etags.lock().await;
        let mut wanted = BTreeMap::new();
        for (key, etag) in listed {
            match relative(&self.prefix, &key) {
                Some(path) => {
                    wanted.insert(path, (key, etag));
                }
                None if key.ends_with('/') => {}
                None => {
                    tracing::warn!(
                        key,
                        "an S3 key that is not a path inside the repository; skipped"
                    )
                }
            }
        }
        let mut changed = false;
        for (path, (key, etag)) in &wanted {
            let local = self.dir.path().join(path);
            if etags.get(path) == Some(etag) && local.is_file() {
                continue;
            }
            self.fetch(key, &local).await?;
            etags.insert(path.clone(), etag.clone());
            changed = true;
        }
        let gone: Vec<PathBuf> = etags
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            etags.remove(&path);
            let local = self.dir.path().join(&path);
            let _ = tokio::fs::remove_file(&local).await;
            // The folders it leaves empty go too, up to the mirror's root.
            let mut folder = local.parent();
            while let Some(f) = folder.filter(|f| *f != self.dir.path()) {
                if tokio::fs::remove_dir(f).await.is_err() {
                    break;
                }
                folder = f.parent();
            }
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_parse_and_keys_stay_inside_the_mirror() {
        assert_eq!(
            "s3://models-bucket/prod/models/"
                .parse::<ModelRepo>()
                .unwrap(),
            ModelRepo::S3 {
                bucket: "models-bucket".into(),
                prefix: "prod/models".into()
            }
        );
        assert_eq!(
            "s3://b".parse::<ModelRepo>().unwrap(),
            ModelRepo::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert!("s3:///x".parse::<ModelRepo>().is_err());
        assert_eq!(
            "models".parse::<ModelRepo>().unwrap(),
            ModelRepo::Local("models".into())
        );

        assert_eq!(
            relative("p", "p/forest/1/model.onnx"),
            Some(PathBuf::from("forest/1/model.onnx"))
        );
        assert_eq!(
            relative("", "forest/model.onnx"),
            Some("forest/model.onnx".into())
        );
        for hostile in [
            "p/../etc/passwd",
            "p/forest/../../x",
            "p//abs",
            "p/forest/1/",
            "p/a\\b",
            "px/forest/model.onnx",
            "p",
        ] {
            assert_eq!(relative("p", hostile), None, "{hostile}");
        }
    }
}
