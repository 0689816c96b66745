//! `gen-certs`: a development certificate authority with one server and one client
//! certificate, enough to run the worker and its clients over mutual TLS locally and in
//! tests. Production deployments bring their own PKI (see the README).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
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
    /// A second client certificate, for the gateway's health function
    /// (`inferencehub-health`, which a worker can allow to call only health checks).
    pub health_cert: PathBuf,
    /// Its private key.
    pub health_key: PathBuf,
}

/// The names the development client certificates are valid for.
pub const GATEWAY_CLIENT_NAME: &str = "inferencehub-gateway";
/// See [`CertPaths::health_cert`].
pub const HEALTH_CLIENT_NAME: &str = "inferencehub-health";

impl CertPaths {
    /// The file names `gen-certs` uses inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            health_cert: dir.join("health.pem"),
            health_key: dir.join("health.key"),
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

/// A development CA held in memory, to issue more certificates (tests of expired and
/// wrongly named client certificates).
pub struct DevCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// When a certificate is valid, as (not before, not after); `None` is rcgen's default span.
pub type Validity = Option<(time::OffsetDateTime, time::OffsetDateTime)>;

/// A validity span that ended years ago (2020-01-01 to 2021-01-01).
pub fn expired() -> Validity {
    let day = |year| {
        time::Date::from_calendar_date(year, time::Month::January, 1)
            .map(|d| d.midnight().assume_utc())
    };
    match (day(2020), day(2021)) {
        (Ok(from), Ok(to)) => Some((from, to)),
        _ => None,
    }
}

impl DevCa {
    /// A fresh CA.
    pub fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("InferenceHub development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { params, key, pem })
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> anyhow::Result<(String, String, Vec<u8>)> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(common_name, sans, usage)?;
        // A serial of its own (the time and a counter), to name it in a revocation list.
        static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        let serial = (nanos & !0xffff)
            | (ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff);
        let serial = SerialNumber::from(serial);
        params.serial_number = Some(serial.clone());
        if let Some((not_before, not_after)) = validity {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        let cert = params.signed_by(&key, &Issuer::new(self.params.clone(), &self.key))?;
        Ok((cert.pem(), key.serialize_pem(), serial.to_bytes()))
    }

    /// Writes a client certificate valid for `name` to `cert` and its key to `key`; returns
    /// its serial number (for [`DevCa::write_crl`]).
    pub fn issue_client(
        &self,
        name: &str,
        validity: Validity,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<Vec<u8>> {
        let (cert_pem, key_pem, serial) = self.issue(
            name,
            vec![name.into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        write(cert, &cert_pem, false)?;
        write(key, &key_pem, true)?;
        Ok(serial)
    }

    /// Writes to `path` a certificate revocation list, signed by this CA and valid for a
    /// day, that revokes the certificates with these serial numbers.
    pub fn write_crl(&self, serials: &[Vec<u8>], path: &Path) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&Issuer::new(self.params.clone(), &self.key))?;
        write(path, &crl.pem()?, false)
    }
}

/// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`, `health.pem` and
/// `health.key` into `out` (created if missing). Keys are ECDSA P-256 and are written with
/// mode 0600.
pub fn generate(out: &Path) -> anyhow::Result<CertPaths> {
    generate_with_ca(out).map(|(paths, _)| paths)
}

/// [`generate`], also returning the CA to issue more certificates from.
pub fn generate_with_ca(out: &Path) -> anyhow::Result<(CertPaths, DevCa)> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let paths = CertPaths::in_dir(out);
    let ca = DevCa::new()?;
    let (server_cert, server_key, _) = ca.issue(
        "inferencehub-worker",
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        None,
    )?;
    write(&paths.ca, ca.pem(), false)?;
    write(&paths.server_cert, &server_cert, false)?;
    write(&paths.server_key, &server_key, true)?;
    ca.issue_client(
        GATEWAY_CLIENT_NAME,
        None,
        &paths.client_cert,
        &paths.client_key,
    )?;
    ca.issue_client(
        HEALTH_CLIENT_NAME,
        None,
        &paths.health_cert,
        &paths.health_key,
    )?;
    Ok((paths, ca))
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
    fn writes_all_seven_pem_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = generate(dir.path())?;
        for (path, marker) in [
            (&paths.ca, "BEGIN CERTIFICATE"),
            (&paths.server_cert, "BEGIN CERTIFICATE"),
            (&paths.client_cert, "BEGIN CERTIFICATE"),
            (&paths.server_key, "PRIVATE KEY"),
            (&paths.client_key, "PRIVATE KEY"),
            (&paths.health_cert, "BEGIN CERTIFICATE"),
            (&paths.health_key, "PRIVATE KEY"),
        ] {
            let text = fs::read_to_string(path)?;
            assert!(text.contains(marker), "{} lacks {marker}", path.display());
        }
        Ok(())
    }
}
