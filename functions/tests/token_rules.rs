//! Optional token rules: a required `typ` header (RFC 9068 access tokens) and a required
//! `token_use` claim (Amazon Cognito), so an ID token from the same issuer is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_functions::auth::{AuthError, Authenticator};
use inferencehub_functions::config::{AuthConfig, group_from_vars};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;

fn authenticator(key: &SigningKey, typ: Option<&str>, token_use: Option<&str>) -> Authenticator {
    let set: JwkSet = serde_json::from_value(jwks(&[key])).unwrap();
    let mut vars = vec![
        ("IHUB_GATEWAY_JWT_ISSUER", "iss"),
        ("IHUB_GATEWAY_JWT_AUDIENCE", "aud"),
        ("IHUB_GATEWAY_JWKS_FILE", "unused"),
    ];
    vars.extend(typ.map(|t| ("IHUB_GATEWAY_JWT_REQUIRED_TYP", t)));
    vars.extend(token_use.map(|t| ("IHUB_GATEWAY_JWT_REQUIRED_TOKEN_USE", t)));
    let config: AuthConfig = group_from_vars(&vars).unwrap();
    Authenticator::with_jwks(config, &set)
}

#[tokio::test]
async fn a_required_typ_refuses_other_token_types() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let body = claims("iss", "aud", "u", "predict", 60, None);
    let plain = format!("Bearer {}", key.sign(&body).unwrap());
    let access = format!(
        "Bearer {}",
        key.sign_with_header(&json!({"alg": "ES256", "kid": "k", "typ": "at+jwt"}), &body)
            .unwrap()
    );
    let strict = authenticator(&key, Some("at+jwt"), None);
    assert!(matches!(
        strict.authenticate(Some(&plain)).await,
        Err(AuthError::Invalid(m)) if m.contains("typ")
    ));
    assert!(strict.authenticate(Some(&access)).await.is_ok());
    // Without the setting, both pass (the default is unchanged).
    let lenient = authenticator(&key, None, None);
    assert!(lenient.authenticate(Some(&plain)).await.is_ok());
}

#[tokio::test]
async fn a_required_token_use_refuses_id_tokens() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let mut id_token = claims("iss", "aud", "u", "predict", 60, None);
    id_token["token_use"] = json!("id");
    let mut access = id_token.clone();
    access["token_use"] = json!("access");
    let auth = authenticator(&key, None, Some("access"));
    let bearer = |c: &serde_json::Value| format!("Bearer {}", key.sign(c).unwrap());
    assert!(matches!(
        auth.authenticate(Some(&bearer(&id_token))).await,
        Err(AuthError::Invalid(m)) if m.contains("token_use")
    ));
    assert!(auth.authenticate(Some(&bearer(&access))).await.is_ok());
}
