//! The AWS SDK configuration every client of a function shares (DynamoDB for the rate
//! limits, Secrets Manager for the worker client's TLS material), loaded once per cold
//! start: one HTTP client, one set of credentials.
//!
//! The HTTP client is our own ([`SdkHttpClient`]): hyper over rustls, trusting Mozilla's
//! root certificates compiled into the binary (`webpki-roots`, as `reqwest` does for the
//! JWKS fetch) plus those of the file `AWS_CA_BUNDLE` names. The SDK's default client reads
//! the machine's CA store instead, on the first call of every cold start: on the Zen 4 EPYC
//! of `make bench-cold-start` (a Debian layout: a bundle, then a directory of ≈ 290 entries,
//! each stat'ed, and the certificates among them parsed again) that was close to half of
//! the predict function's CPU before its first answer (7.5–8.1 ms with it, 4.3–4.6 without,
//! docs/benchmarks.md); Lambda's image (Amazon Linux 2023) keeps them in bundle files, a
//! couple of hundred kB of PEM through a constant-time base64 decoder, not measured there.
//! AWS's endpoints chain to Amazon Trust Services roots, which Mozilla's list carries.

use std::sync::Mutex;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
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
        let bundle = std::env::var_os("AWS_CA_BUNDLE").map(std::path::PathBuf::from);
        let client = SdkHttpClient::new(bundle.as_deref());
        let loader = aws_config::from_env().http_client(SharedHttpClient::new(client));
        let loader = if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            loader.credentials_provider(EnvironmentVariableCredentialsProvider::new())
        } else {
            loader
        };
        loader.load().await
    })
    .await
}

/// The roots the SDK's connections trust: Mozilla's, compiled in, and the certificates of
/// `bundle` (a PEM file: a private CA in front of a custom endpoint). Its error names the
/// file and what is wrong with it.
pub fn trust_roots(bundle: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let Some(path) = bundle else {
        return Ok(roots);
    };
    let fail = |why: &dyn std::fmt::Display| format!("AWS_CA_BUNDLE {}: {why}", path.display());
    let pem = std::fs::read(path).map_err(|e| fail(&e))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail(&"no PEM certificate in it"));
    }
    Ok(roots)
}

/// The functions' HTTP client for the AWS SDK: HTTP/1.1, TLS by rustls (aws-lc) with
/// [`trust_roots`], plain HTTP for local endpoints (dynalite, moto). One connection pool per
/// pair of connect and read timeouts the SDK asks for (the functions' clients use one or
/// two). A bundle that cannot be read fails every call with the reason, rather than
/// falling back to trusting less or more than was configured.
#[derive(Debug)]
pub struct SdkHttpClient {
    tls: Result<rustls::ClientConfig, String>,
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

type Timeouts = (Option<Duration>, Option<Duration>);

impl SdkHttpClient {
    /// A client trusting [`trust_roots`] of `bundle`.
    pub fn new(bundle: Option<&std::path::Path>) -> Self {
        crate::crypto::install_crypto_provider();
        let tls = trust_roots(bundle).map(|roots| {
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        });
        if let Err(e) = &tls {
            tracing::error!(error = %e, "the AWS SDK's HTTP client cannot connect");
        }
        Self {
            tls,
            connectors: Mutex::new(Vec::new()),
        }
    }
}

impl HttpClient for SdkHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, connector)) = connectors.iter().find(|(k, _)| *k == key) {
            return connector.clone();
        }
        let connector = SharedHttpConnector::new(Pool {
            client: self
                .tls
                .as_ref()
                .map(|tls| pool(tls, key))
                .map_err(Clone::clone),
            read_timeout: key.1,
        });
        connectors.push((key, connector.clone()));
        connector
    }
}

type HyperClient = Client<hyper_rustls::HttpsConnector<TcpConnector>, SdkBody>;

fn pool(tls: &rustls::ClientConfig, (connect, _): Timeouts) -> HyperClient {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(connect);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    // Idle connections are dropped after hyper's usual 90 s (checked again at checkout, so
    // one left over from before a Lambda freeze is not reused once expired); the timer also
    // evicts them while the function runs.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// One connection pool, or why none can be made (the CA bundle).
#[derive(Debug)]
struct Pool {
    client: Result<HyperClient, String>,
    /// From the request sent to the response's head.
    read_timeout: Option<Duration>,
}

impl HttpConnector for Pool {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(why) => {
                let why = why.clone();
                return HttpConnectorFuture::ready(Err(ConnectorError::other(why.into(), None)));
            }
        };
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let sent = client.request(request);
            let response = match read_timeout {
                Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| {
                    ConnectorError::timeout(format!("no response within {limit:?}").into())
                })?,
                None => sent.await,
            }
            .map_err(classify)?;
            Response::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The SDK retries a connector's I/O errors and timeouts (the rate limiter once, after
/// either); anything else is final.
fn classify(error: hyper_util::client::legacy::Error) -> ConnectorError {
    let timed_out =
        std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
    let broken = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .is_some_and(|e| e.is_incomplete_message() || e.is_closed() || e.is_canceled());
    if timed_out {
        ConnectorError::timeout(error.into())
    } else if error.is_connect() || broken {
        ConnectorError::io(error.into())
    } else {
        ConnectorError::other(error.into(), None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mozillas_roots_are_compiled_in_and_a_bundle_adds_its_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let paths = inferencehub_devkit::certs::generate(dir.path()).unwrap();
        let compiled = trust_roots(None).unwrap().len();
        assert_eq!(compiled, webpki_roots::TLS_SERVER_ROOTS.len());
        assert!(compiled > 100, "{compiled} roots");
        // The CA and a leaf issued by it: two certificates, two more roots.
        let two = dir.path().join("two.pem");
        let text = std::fs::read_to_string(&paths.ca).unwrap()
            + &std::fs::read_to_string(&paths.server_cert).unwrap();
        std::fs::write(&two, text).unwrap();
        assert_eq!(trust_roots(Some(&two)).unwrap().len(), compiled + 2);
    }

    #[test]
    fn a_bundle_that_is_missing_empty_or_broken_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = trust_roots(Some(&missing)).unwrap_err();
        assert!(
            err.contains("missing.pem") && err.contains("AWS_CA_BUNDLE"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = trust_roots(Some(&empty)).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = trust_roots(Some(&broken)).unwrap_err();
        assert!(err.contains("broken.pem"), "{err}");
    }
}
