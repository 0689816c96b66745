//! The worker client's TLS material: from Secrets Manager at cold start (deployed; the key
//! never sits in the function's configuration, where `lambda:GetFunctionConfiguration`
//! would show it) or from files / PEM values (local stack, tests).

use anyhow::Context;
use inferencehub_proto::settings::ClientPems;
use serde::Deserialize;

use crate::config::WorkerConfig;

/// What the secret's JSON holds.
#[derive(Deserialize)]
struct ClientSecret {
    ca: String,
    client_cert: String,
    client_key: String,
}

/// Parses a secret's `SecretString`: JSON with `ca`, `client_cert` and `client_key`, each
/// PEM text. The error never quotes the secret.
pub fn parse_client_secret(text: &str) -> anyhow::Result<ClientPems> {
    let secret: ClientSecret = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "the worker TLS secret must be JSON with \"ca\", \"client_cert\" and \"client_key\" (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    for (name, value, marker) in [
        ("ca", &secret.ca, "CERTIFICATE"),
        ("client_cert", &secret.client_cert, "CERTIFICATE"),
        ("client_key", &secret.client_key, "PRIVATE KEY"),
    ] {
        anyhow::ensure!(
            value.contains("-----BEGIN") && value.contains(marker),
            "the worker TLS secret's \"{name}\" is not a PEM {marker}"
        );
    }
    Ok(ClientPems {
        ca: secret.ca.into_bytes(),
        cert: secret.client_cert.into_bytes(),
        key: secret.client_key.into_bytes(),
    })
}

/// The PEM texts the worker client presents: from the secret when
/// `IHUB_GATEWAY_WORKER_TLS_SECRET_ID` is set (one GetSecretValue on that id, with the
/// standard AWS environment: region, credentials, `AWS_ENDPOINT_URL_SECRETS_MANAGER`),
/// else from the three `IHUB_WORKER_CLIENT_TLS_*` values.
pub async fn worker_client_pems(config: &WorkerConfig) -> anyhow::Result<ClientPems> {
    let Some(id) = &config.tls_secret_id else {
        return config.tls.read().map_err(anyhow::Error::msg);
    };
    anyhow::ensure!(
        !config.tls.any_set(),
        "set either IHUB_GATEWAY_WORKER_TLS_SECRET_ID or the IHUB_GATEWAY_WORKER_TLS_CA/CERT/KEY values, not both"
    );
    let config = aws_sdk_secretsmanager::config::Builder::from(crate::aws::sdk_config().await)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(std::time::Duration::from_secs(5))
                .build(),
        )
        .build();
    fetch_client_pems(&aws_sdk_secretsmanager::Client::from_conf(config), id).await
}

/// One GetSecretValue of `id`, parsed as the worker client's TLS material.
pub async fn fetch_client_pems(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> anyhow::Result<ClientPems> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_secretsmanager::error::DisplayErrorContext(&e)))
        .with_context(|| format!("reading the worker TLS secret {id}"))?;
    let text = out
        .secret_string()
        .with_context(|| format!("the worker TLS secret {id} has no SecretString"))?;
    parse_client_secret(text).with_context(|| format!("the worker TLS secret {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_needs_three_pem_values_and_errors_never_quote_it() {
        let good = serde_json::json!({
            "ca": "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----",
            "client_cert": "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----",
            "client_key": "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----",
        });
        let pems = parse_client_secret(&good.to_string()).unwrap();
        assert!(String::from_utf8(pems.key).unwrap().contains("SECRETKEY"));

        let mut no_key = good.clone();
        no_key.as_object_mut().unwrap().remove("client_key");
        let err = parse_client_secret(&no_key.to_string()).unwrap_err();
        assert!(err.to_string().contains("client_key"), "{err}");

        let mut wrong = good.clone();
        wrong["client_key"] = "SECRETKEY".into();
        let err = parse_client_secret(&wrong.to_string()).unwrap_err();
        assert!(
            err.to_string().contains("\"client_key\" is not a PEM"),
            "{err}"
        );
        assert!(!err.to_string().contains("SECRETKEY"));

        let err = parse_client_secret("{\"ca\": \"SECRETKEY").unwrap_err();
        assert!(!format!("{err:#}").contains("SECRETKEY"), "{err:#}");
    }
}
