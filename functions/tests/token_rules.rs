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
    // An empty setting (the template's parameter left blank) is no setting.
    let blank = authenticator(&key, Some(""), Some(""));
    assert!(blank.authenticate(Some(&plain)).await.is_ok());
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

/// Amazon Cognito's access tokens carry the app client's id as `client_id` and no `aud`;
/// they pass when `client_id` is the configured audience, and only as access tokens.
#[tokio::test]
async fn a_cognito_access_token_is_checked_by_its_client_id() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let auth = authenticator(&key, None, Some("access"));
    let bearer = |c: &serde_json::Value| format!("Bearer {}", key.sign(c).unwrap());
    let mut access = claims("iss", "aud", "u", "predict", 60, None);
    access.as_object_mut().unwrap().remove("aud");
    access["token_use"] = json!("access");
    access["client_id"] = json!("aud");
    let caller = auth.authenticate(Some(&bearer(&access))).await.unwrap();
    assert_eq!(caller.sub, "u");

    let mut other_client = access.clone();
    other_client["client_id"] = json!("another-app");
    assert!(matches!(
        auth.authenticate(Some(&bearer(&other_client))).await,
        Err(AuthError::Invalid(m)) if m.contains("client_id")
    ));
    // A token with `aud` is judged by `aud`: a matching client_id does not rescue it.
    let mut wrong_aud = access.clone();
    wrong_aud["aud"] = json!("another-api");
    assert!(matches!(
        auth.authenticate(Some(&bearer(&wrong_aud))).await,
        Err(AuthError::Invalid(m)) if m.contains("audience")
    ));
    // Only access tokens may name the audience by client_id.
    let lenient = authenticator(&key, None, None);
    let mut not_access = access.clone();
    not_access["token_use"] = json!("id");
    assert!(
        lenient
            .authenticate(Some(&bearer(&not_access)))
            .await
            .is_err()
    );
    let mut neither = access.clone();
    neither.as_object_mut().unwrap().remove("client_id");
    assert!(matches!(
        auth.authenticate(Some(&bearer(&neither))).await,
        Err(AuthError::Invalid(m)) if m.contains("client_id")
    ));
    // An `aud` array holding the audience passes as before.
    let mut listed = claims("iss", "aud", "u", "predict", 60, None);
    listed["aud"] = json!(["other", "aud"]);
    assert!(lenient.authenticate(Some(&bearer(&listed))).await.is_ok());
}
