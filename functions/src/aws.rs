//! The AWS SDK configuration every client of a function shares (DynamoDB for the rate
//! limits, Secrets Manager for the worker client's TLS material), loaded once per cold
//! start: one HTTP client, one set of credentials.

use aws_config::SdkConfig;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use tokio::sync::OnceCell;

static SDK: OnceCell<SdkConfig> = OnceCell::const_new();

/// The shared configuration, from the standard AWS environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL_*`, `AWS_CA_BUNDLE`). Credentials: the `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` values when set, which is how Lambda hands
/// a function its role's credentials and what the SDK's default chain would pick first
/// anyway; without them, that whole chain (profiles, web identity, ECS, IMDS). Building the
/// chain is not free: it constructs an STS client with a TLS connector of its own, a
/// quarter of the predict function's CPU before its first answer once aws-lc's start-up
/// entropy was gone (`make bench-cold-start`), for credentials a function never reads
/// from there.
pub async fn sdk_config() -> &'static SdkConfig {
    SDK.get_or_init(|| async {
        let loader = aws_config::from_env();
        let loader = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            loader.credentials_provider(EnvironmentVariableCredentialsProvider::new())
        } else {
            loader
        };
        loader.load().await
    })
    .await
}
