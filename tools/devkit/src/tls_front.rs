//! A TLS front on loopback for a plain-TCP server (dynalite speaks HTTP only): it
//! terminates TLS with a given certificate and forwards each connection's bytes, so a
//! client is tested, or measured, against an endpoint that is TLS as AWS's are.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The front; it stops accepting when dropped.
pub struct TlsFront {
    /// The loopback port it listens on (`https://localhost:<port>`).
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Listens on a free loopback port, presenting `cert` (a PEM chain) with `key`, and
    /// forwards every connection whose handshake succeeds to `upstream` (`host:port`).
    pub async fn start(cert: &Path, key: &Path, upstream: String) -> anyhow::Result<TlsFront> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // Both legs without Nagle's delay: a request's last segment would
                    // otherwise wait for the peer's delayed ACK (40 ms on Linux).
                    let _ = stream.set_nodelay(true);
                    // A client that refuses the certificate ends here, as it should.
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsFront { port, task })
    }
}
