//! A local DynamoDB-compatible server for development and tests: a client for it, the
//! rate-limit table with the schema of `template.yaml`, and dynalite (Node.js, installed
//! by `make dynalite`) started on a free port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_dynamodb::Client;
use tokio::process::{Child, Command};

/// A client for a local DynamoDB-compatible server (dynalite, LocalStack) at `endpoint`,
/// with dummy credentials and the same fail-fast budget as the functions' own client.
pub fn local_client(endpoint: &str, timeout: Duration) -> Client {
    use aws_sdk_dynamodb::config::{
        Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
    };
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "local"))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_millis(500)))
                .build(),
        )
        // As the functions' client: no SDK retries (the limiter retries once itself).
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// Creates the rate-limit table when it is missing (key `pk` string, on-demand billing,
/// TTL on `expires_at`: the same schema as `template.yaml`) and waits until it is ACTIVE.
/// For local stacks and tests; in AWS the template owns the table.
pub async fn ensure_table(client: &Client, table: &str) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        TableStatus, TimeToLiveSpecification,
    };
    let exists = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .is_ok();
    if !exists {
        client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .send()
            .await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .describe_table()
            .table_name(table)
            .send()
            .await?
            .table()
            .and_then(|t| t.table_status().cloned());
        if status == Some(TableStatus::Active) {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("table {table} did not become ACTIVE");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl = client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()?,
        )
        .send()
        .await;
    if let Err(e) = ttl {
        // Already enabled, or a local server without TTL support: counters still expire
        // logically because every window has its own key.
        tracing::info!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "TTL not (re)enabled");
    }
    Ok(())
}

/// Where `make dynalite` installs the server.
pub fn dynalite_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../localstack/node_modules/.bin/dynalite")
}

/// A dynalite process on a free loopback port with `table` created, killed on drop.
pub struct Dynalite {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: Child,
}

impl Dynalite {
    /// Starts dynalite and creates `table` on it.
    pub async fn start(table: &str) -> anyhow::Result<Dynalite> {
        let bin = dynalite_bin();
        anyhow::ensure!(
            bin.exists(),
            "{} missing: run `make dynalite` (make test does)",
            bin.display()
        );
        let port = crate::free_port()?;
        let child = Command::new(&bin)
            .args(["--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        crate::wait_listening(port, Duration::from_secs(10), "dynalite").await?;
        ensure_table(&local_client(&endpoint, Duration::from_secs(5)), table).await?;
        Ok(Dynalite {
            endpoint,
            _child: child,
        })
    }
}
