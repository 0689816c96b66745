//! Development signing keys and tokens: key pairs for ES256 (the default), RS256 and
//! EdDSA, their JWKS, and token minting. Used by `inferencehub-dev mint-token`, `make dev`
//! and tests; production keys live with the identity provider.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, RsaKeySize};
use serde_json::{Value, json};

/// A private signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id, in the token header and the JWK.
    pub kid: String,
    /// Signature algorithm.
    pub alg: Algorithm,
    /// PKCS#8 PEM private key.
    pub private_pem: String,
    /// The public key as a JWK.
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A new random key for `alg` (ES256, RS256 or EdDSA).
    pub fn generate(alg: Algorithm, kid: &str) -> anyhow::Result<Self> {
        let pair = match alg {
            Algorithm::ES256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
            Algorithm::EdDSA => KeyPair::generate_for(&PKCS_ED25519)?,
            Algorithm::RS256 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?,
            other => bail!("{other:?} keys are not supported; use ES256, RS256 or EdDSA"),
        };
        let private_pem = pair.serialize_pem();
        let jwk = match alg {
            // jsonwebtoken derives RSA and EC public JWKs from the private key itself, but
            // not Ed25519 ones: that public key is the raw 32 bytes.
            Algorithm::EdDSA => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw())})
            }
            _ => {
                let key = encoding_key(alg, &private_pem)?;
                serde_json::to_value(Jwk::from_encoding_key(&key, alg)?)?
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(format!("{alg:?}"));
        Ok(Self {
            kid: kid.to_string(),
            alg,
            private_pem,
            jwk,
        })
    }

    /// A token with `header` exactly as given (members a `jsonwebtoken::Header` cannot
    /// hold, such as `crit`), signed with this key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> anyhow::Result<String> {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &encoding_key(self.alg, &self.private_pem)?,
            self.alg,
        )?;
        Ok(format!("{message}.{signature}"))
    }

    /// Signs `claims` with this key (header: `alg`, `kid`, `typ: JWT`).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &encoding_key(self.alg, &self.private_pem)?,
        )?)
    }
}

fn encoding_key(alg: Algorithm, private_pem: &str) -> anyhow::Result<EncodingKey> {
    let pem = private_pem.as_bytes();
    Ok(match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem)?,
        _ => EncodingKey::from_rsa_pem(pem)?,
    })
}

/// A JWKS document holding the public halves of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// File names of a development key set.
pub struct DevKeyFiles {
    /// PKCS#8 PEM private key.
    pub private_key: PathBuf,
    /// JWKS with the public key.
    pub jwks: PathBuf,
}

impl DevKeyFiles {
    /// `dev-jwt.pem` and `dev-jwks.json` inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            private_key: dir.join("dev-jwt.pem"),
            jwks: dir.join("dev-jwks.json"),
        }
    }
}

/// Creates an ES256 development key and its JWKS in `dir` unless they exist; returns them.
pub fn ensure_dev_keys(dir: &Path) -> anyhow::Result<SigningKey> {
    let files = DevKeyFiles::in_dir(dir);
    if files.private_key.is_file() && files.jwks.is_file() {
        return load_dev_key(&files);
    }
    std::fs::create_dir_all(dir)?;
    let key = SigningKey::generate(Algorithm::ES256, "inferencehub-dev-1")?;
    std::fs::write(&files.private_key, &key.private_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&files.private_key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(&files.jwks, serde_json::to_string_pretty(&jwks(&[&key]))?)?;
    Ok(key)
}

/// Reads a key written by [`ensure_dev_keys`] (kid and alg from the JWKS's first key).
pub fn load_dev_key(files: &DevKeyFiles) -> anyhow::Result<SigningKey> {
    let private_pem = std::fs::read_to_string(&files.private_key)
        .with_context(|| format!("{}", files.private_key.display()))?;
    let set: Value = serde_json::from_str(
        &std::fs::read_to_string(&files.jwks)
            .with_context(|| format!("{}", files.jwks.display()))?,
    )?;
    let jwk = set["keys"][0].clone();
    let kid = jwk["kid"]
        .as_str()
        .context("JWKS key without kid")?
        .to_string();
    let alg = match jwk["alg"].as_str() {
        Some("RS256") => Algorithm::RS256,
        Some("EdDSA") => Algorithm::EdDSA,
        _ => Algorithm::ES256,
    };
    Ok(SigningKey {
        kid,
        alg,
        private_pem,
        jwk,
    })
}

/// Standard claims for a development token.
pub fn claims(
    issuer: &str,
    audience: &str,
    sub: &str,
    scope: &str,
    ttl_secs: i64,
    tier: Option<&str>,
) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut claims = json!({
        "iss": issuer, "aud": audience, "sub": sub, "scope": scope,
        "iat": now, "nbf": now, "exp": now + ttl_secs,
    });
    if let Some(tier) = tier {
        claims["tier"] = json!(tier);
    }
    claims
}

/// Parses `90s`, `15m`, `1h`, `2d` or plain seconds.
pub fn parse_ttl(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: i64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => bail!("bad duration unit in {text:?}: use s, m, h or d"),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert!(parse_ttl("1w").is_err());
    }

    #[test]
    fn every_algorithm_signs_a_token_its_jwk_verifies() {
        for alg in [Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg, "k").unwrap();
            let token = key
                .sign(&claims("iss", "aud", "alice", "predict", 60, None))
                .unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.set_audience(&["aud"]);
            jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
    }
}
