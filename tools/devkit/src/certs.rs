//! `gen-certs`: a development certificate authority with one server and one client
//! certificate, enough to run the worker and its clients over mutual TLS locally and in
//! tests. Production deployments bring their own PKI (see the README).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths of the files [`generate`] writes.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The CA certificate both sides trust.
    pub ca: PathBuf,
    /// The server certificate, valid for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl CertPaths {
    /// The file names `gen-certs` uses inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "InferenceHub development");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn leaf_params(
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem` and `client.key` into `out`
/// (created if missing). Keys are ECDSA P-256 and are written with mode 0600.
pub fn generate(out: &Path) -> anyhow::Result<CertPaths> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let paths = CertPaths::in_dir(out);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("InferenceHub development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let server_cert = leaf_params(
        "inferencehub-worker",
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let client_cert = leaf_params(
        "inferencehub-gateway",
        vec!["inferencehub-gateway".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&client_key, &issuer)?;

    write(&paths.ca, &ca_cert.pem(), false)?;
    write(&paths.server_cert, &server_cert.pem(), false)?;
    write(&paths.server_key, &server_key.serialize_pem(), true)?;
    write(&paths.client_cert, &client_cert.pem(), false)?;
    write(&paths.client_key, &client_key.serialize_pem(), true)?;
    Ok(paths)
}

fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_five_pem_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = generate(dir.path())?;
        for (path, marker) in [
            (&paths.ca, "BEGIN CERTIFICATE"),
            (&paths.server_cert, "BEGIN CERTIFICATE"),
            (&paths.client_cert, "BEGIN CERTIFICATE"),
            (&paths.server_key, "PRIVATE KEY"),
            (&paths.client_key, "PRIVATE KEY"),
        ] {
            let text = fs::read_to_string(path)?;
            assert!(text.contains(marker), "{} lacks {marker}", path.display());
        }
        Ok(())
    }
}
