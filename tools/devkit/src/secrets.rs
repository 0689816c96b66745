//! A local Secrets Manager- and S3-compatible server (moto's, from PyPI: `make moto`
//! installs it into `.cache/moto`) for tests of the functions' cold-start secret read and
//! of S3 model repositories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Where `make moto` installs the server; `IHUB_MOTO_SERVER` overrides.
pub fn moto_server_bin() -> PathBuf {
    std::env::var_os("IHUB_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/moto/bin/moto_server")
        })
}

/// A moto server process on a free loopback port, killed on drop.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: Child,
}

impl Moto {
    /// Starts the server and waits until it answers.
    pub async fn start() -> anyhow::Result<Moto> {
        let bin = moto_server_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} missing: run `make moto` (make test does)",
            bin.display()
        );
        let port = crate::free_port()?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        crate::wait_listening(port, Duration::from_secs(30), "moto_server").await?;
        Ok(Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: child,
        })
    }

    /// A Secrets Manager client for this server (dummy credentials, us-east-1).
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        use aws_sdk_secretsmanager::config::{Credentials, Region};
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version_latest()
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("local", "local", None, None, "local"))
            .build();
        aws_sdk_secretsmanager::Client::from_conf(config)
    }

    /// An S3 client for this server (dummy credentials, us-east-1, path-style addresses).
    pub fn s3(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{Credentials, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("local", "local", None, None, "local"))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// What a process needs in its environment to reach this server with the AWS SDK.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "local".into()),
            ("AWS_SECRET_ACCESS_KEY", "local".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Creates a secret with `value` as its `SecretString`; returns its ARN.
    pub async fn create_secret(&self, name: &str, value: &str) -> anyhow::Result<String> {
        let out = self
            .client()
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e))
            })?;
        out.arn()
            .map(str::to_string)
            .context("no ARN in the answer")
    }
}
