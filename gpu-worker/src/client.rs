//! A small mutual-TLS client for the worker, behind the `predict`, `models` and `health`
//! subcommands: smoke tests by hand, and the container health check (no extra probe binary).

use std::time::Duration;

use anyhow::Context;
use inferencehub_proto::field_errors;
use inferencehub_proto::pb::model_inference_client::ModelInferenceClient;
use inferencehub_proto::pb::{ListModelsRequest, PredictRequest};
use inferencehub_proto::settings::WorkerClientTls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::config::{ClientArgs, PredictArgs, ProbeArgs};

/// Connects to `addr` (an `https://` URL) over mutual TLS with the client settings the
/// gateway uses too (the same `IHUB_GATEWAY_WORKER_TLS_*` variables).
pub async fn connect(
    addr: &str,
    tls: &WorkerClientTls,
    timeout: Duration,
) -> anyhow::Result<Channel> {
    let pems = tls.read().map_err(anyhow::Error::msg)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pems.ca))
        .identity(Identity::from_pem(pems.cert, pems.key))
        .domain_name(tls.server_name.clone());
    Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

async fn channel(args: &ClientArgs) -> anyhow::Result<Channel> {
    connect(&args.addr, &args.tls, args.timeout).await
}

/// `health`: exits 0 when the worker answers SERVING, 1 otherwise.
pub async fn health(args: &ClientArgs) -> anyhow::Result<bool> {
    let mut client = HealthClient::new(channel(args).await?);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    Ok(status == ServingStatus::Serving)
}

/// `models`: prints the catalogue as JSON lines.
pub async fn models(args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = ModelInferenceClient::new(channel(args).await?);
    for m in client
        .list_models(ListModelsRequest {})
        .await?
        .into_inner()
        .models
    {
        println!(
            "{}",
            serde_json::json!({
                "name": m.name, "version": m.version, "kind": m.kind().as_str_name(),
                "labels": m.labels, "feature_count": m.feature_count,
                "max_tokens": m.max_tokens, "architecture": m.architecture,
            })
        );
    }
    Ok(())
}

/// `predict`: one prediction, printed as JSON.
pub async fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let mut client = ModelInferenceClient::new(channel(&args.client).await?);
    let r = client
        .predict(PredictRequest {
            model_name: args.model.clone(),
            prompt: args.prompt.clone().unwrap_or_default(),
            features: args.features.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| {
            let fields = field_errors(&s);
            anyhow::anyhow!("{:?}: {} {fields:?}", s.code(), s.message())
        })?
        .into_inner();
    let scores: serde_json::Map<String, serde_json::Value> = r
        .scores
        .iter()
        .map(|s| (s.label.clone(), serde_json::json!(s.probability)))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "model_name": r.model_name, "model_version": r.model_version, "label": r.label,
            "probability": r.probability, "scores": scores, "latency_ms": r.latency_ms,
            "queue_ms": r.queue_ms, "compute_ms": r.compute_ms, "batch_size": r.batch_size,
            "request_id": r.request_id,
        })
    );
    Ok(())
}

/// `probe`: GET /healthz on the metrics port; true on 200.
pub async fn probe(args: &ProbeArgs) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(&args.addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response.starts_with(b"HTTP/1.1 200"))
    };
    let up = tokio::time::timeout(Duration::from_secs(5), check).await??;
    println!("{}", if up { "SERVING" } else { "NOT_SERVING" });
    Ok(up)
}
