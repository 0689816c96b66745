//! The one TLS crypto provider of the workspace (aws-lc-rs), for every client the
//! functions build (JWKS over HTTPS, gRPC to the workers, AWS).

/// Installs aws-lc-rs as the process-wide rustls crypto provider (the one provider this
/// workspace compiles in). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
