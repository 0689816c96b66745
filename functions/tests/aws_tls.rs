//! The functions' own HTTP client for the AWS SDK (`inferencehub_functions::aws`), against
//! dynalite behind a real TLS endpoint on loopback (rustls, a certificate from a CA made for
//! the test): DynamoDB calls go through when `AWS_CA_BUNDLE`'s CA signed the endpoint's
//! certificate, and fail as a transport error when it did not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use inferencehub_devkit::certs;
use inferencehub_devkit::dynamo::Dynalite;
use inferencehub_devkit::tls_front::TlsFront;
use inferencehub_functions::aws::SdkHttpClient;

const TABLE: &str = "limits";

/// A DynamoDB client through [`SdkHttpClient`] trusting `bundle`, at `endpoint`.
fn client(bundle: Option<&Path>, endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .http_client(SharedHttpClient::new(SdkHttpClient::new(bundle)))
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "test"))
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A DescribeTable that `client` cannot send: a transport failure (the SDK's
/// `DispatchFailure`), as its message.
async fn refused(client: aws_sdk_dynamodb::Client) -> String {
    let err = client
        .describe_table()
        .table_name(TABLE)
        .send()
        .await
        .unwrap_err();
    let text = DisplayErrorContext(&err).to_string();
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{text}");
    text
}

#[tokio::test]
async fn dynamodb_over_tls_trusts_the_bundles_ca_and_refuses_one_it_does_not_know() {
    let dynalite = Dynalite::start(TABLE).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path()).unwrap();
    let upstream = dynalite.endpoint.trim_start_matches("http://").to_string();
    let front = TlsFront::start(&paths.server_cert, &paths.server_key, upstream)
        .await
        .unwrap();
    let endpoint = format!("https://localhost:{}", front.port);

    // Trusting the test's CA: a write and a read back, over TLS, through our client.
    let trusted = client(Some(&paths.ca), &endpoint);
    trusted
        .put_item()
        .table_name(TABLE)
        .item("pk", AttributeValue::S("tls-caller".into()))
        .item("count", AttributeValue::N("7".into()))
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())
        .unwrap();
    let item = trusted
        .get_item()
        .table_name(TABLE)
        .key("pk", AttributeValue::S("tls-caller".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the item written over TLS");
    assert_eq!(item["count"], AttributeValue::N("7".into()));

    // Mozilla's roots only (no bundle): the test CA is not among them; the call fails as a
    // transport error naming why.
    let text = refused(client(None, &endpoint)).await;
    assert!(text.contains("UnknownIssuer"), "{text}");

    // A bundle that names no file: every call fails with the file's name, at once.
    let missing = dir.path().join("nowhere.pem");
    let text = refused(client(Some(&missing), &endpoint)).await;
    assert!(text.contains("nowhere.pem"), "{text}");
}

#[tokio::test]
async fn plain_http_endpoints_still_work_for_local_stacks() {
    let dynalite = Dynalite::start(TABLE).await.unwrap();
    let tables = client(None, &dynalite.endpoint)
        .list_tables()
        .send()
        .await
        .unwrap();
    assert_eq!(tables.table_names(), [TABLE]);
}
