//! A JWKS served over real HTTP: fetched at cold start, refetched when a token names an
//! unknown `kid` — at most once per interval — so key rotation is picked up without a
//! redeploy and a flood of bad tokens cannot turn into a flood of fetches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferencehub_devkit::keys::{SigningKey, claims, jwks};
use inferencehub_functions::auth::{AuthError, Authenticator};
use inferencehub_functions::config::{AuthConfig, group_from_vars};
use inferencehub_proto::settings::format_duration;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves whatever JWKS `body` holds and counts the requests.
async fn jwks_server(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>) -> u16 {
    serve(body, hits, None).await
}

/// Like [`jwks_server`]; with `redirect`, every answer is a 302 to that URL instead.
async fn serve(body: Arc<Mutex<String>>, hits: Arc<AtomicUsize>, redirect: Option<String>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            let hits = hits.clone();
            let redirect = redirect.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf[read..]).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    read += n;
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let json = body.lock().unwrap().clone();
                let response = match redirect {
                    Some(to) => format!(
                        "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                        json.len()
                    ),
                };
                stream.write_all(response.as_bytes()).await.unwrap();
            });
        }
    });
    port
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let old = SigningKey::generate(Algorithm::ES256, "2026-01").unwrap();
    let new = SigningKey::generate(Algorithm::RS256, "2026-02").unwrap();
    let stranger = SigningKey::generate(Algorithm::EdDSA, "nobody").unwrap();
    let body = Arc::new(Mutex::new(jwks(&[&old]).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;

    let auth = Authenticator::new(auth_config(
        &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        &[
            ("IHUB_GATEWAY_JWT_LEEWAY", "0"),
            ("IHUB_GATEWAY_JWKS_REFETCH", "500ms"),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched at cold start");
    let bearer = |key: &SigningKey| {
        format!(
            "Bearer {}",
            key.sign(&claims("iss", "aud", "u", "predict", 60, None))
                .unwrap()
        )
    };
    assert_eq!(
        auth.authenticate(Some(&bearer(&old))).await.unwrap().sub,
        "u"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "known kids never fetch");

    // The provider rotates in a new key; within the interval it is not fetched yet.
    *body.lock().unwrap() = jwks(&[&old, &new]).to_string();
    assert!(matches!(
        auth.authenticate(Some(&bearer(&new))).await,
        Err(AuthError::Invalid(_))
    ));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // After the interval, the first unknown kid refetches and the new key works.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(auth.authenticate(Some(&bearer(&new))).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A burst of tokens with a kid nobody published costs at most one more fetch.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let attempts = futures::future::join_all((0..20).map(|_| {
        let token = bearer(&stranger);
        let auth = &auth;
        async move { auth.authenticate(Some(&token)).await }
    }))
    .await;
    assert!(
        attempts
            .iter()
            .all(|a| matches!(a, Err(AuthError::Invalid(_))))
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_redirecting_jwks_url_is_not_followed() {
    let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let elsewhere = serve(
        Arc::new(Mutex::new(jwks(&[&key]).to_string())),
        elsewhere_hits.clone(),
        None,
    )
    .await;
    let redirect_hits = Arc::new(AtomicUsize::new(0));
    let redirecting = serve(
        Arc::new(Mutex::new(String::new())),
        redirect_hits.clone(),
        Some(format!("http://127.0.0.1:{elsewhere}/jwks.json")),
    )
    .await;
    let auth = Authenticator::new(auth_config(
        &format!("http://127.0.0.1:{redirecting}/jwks.json"),
        &[],
    ))
    .await
    .unwrap();
    let token = key
        .sign(&claims("iss", "aud", "u", "predict", 60, None))
        .unwrap();
    let refused = auth.authenticate(Some(&format!("Bearer {token}"))).await;
    assert!(matches!(refused, Err(AuthError::Invalid(_))), "{refused:?}");
    assert!(redirect_hits.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

fn bearer(key: &SigningKey) -> String {
    format!(
        "Bearer {}",
        key.sign(&claims("iss", "aud", "u", "predict", 60, None))
            .unwrap()
    )
}

/// Settings for issuer `iss`, audience `aud` and the JWKS at `url`, with `more`.
fn auth_config(url: &str, more: &[(&str, &str)]) -> AuthConfig {
    let mut vars = vec![
        ("IHUB_GATEWAY_JWT_ISSUER", "iss"),
        ("IHUB_GATEWAY_JWT_AUDIENCE", "aud"),
        ("IHUB_GATEWAY_JWKS_URL", url),
    ];
    vars.extend_from_slice(more);
    group_from_vars(&vars).unwrap()
}

async fn authenticator(port: u16, refetch: Duration, refresh: Duration) -> Authenticator {
    let (refetch, refresh) = (format_duration(refetch), format_duration(refresh));
    Authenticator::new(auth_config(
        &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        &[
            ("IHUB_GATEWAY_JWT_LEEWAY", "0"),
            ("IHUB_GATEWAY_JWKS_REFETCH", &refetch),
            ("IHUB_GATEWAY_JWKS_REFRESH", &refresh),
        ],
    ))
    .await
    .unwrap()
}

#[tokio::test]
async fn a_removed_key_stops_being_trusted_after_the_refresh_interval() {
    let old = SigningKey::generate(Algorithm::ES256, "old").unwrap();
    let new = SigningKey::generate(Algorithm::ES256, "new").unwrap();
    let body = Arc::new(Mutex::new(jwks(&[&old, &new]).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;
    let auth = authenticator(port, Duration::from_secs(60), Duration::from_secs(1)).await;
    assert!(auth.authenticate(Some(&bearer(&old))).await.is_ok());

    // The provider withdraws the old key (compromised, say). No token names an unknown
    // kid, yet once the keys are older than the refresh interval they are fetched again.
    *body.lock().unwrap() = jwks(&[&new]).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        auth.authenticate(Some(&bearer(&old))).await,
        Err(AuthError::Invalid(_))
    ));
    assert!(auth.authenticate(Some(&bearer(&new))).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_cold_start_fetch_is_retried_within_seconds() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let body = Arc::new(Mutex::new("not json".to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;
    // Unknown kids refetch once a minute at most, but a failed fetch backs off in seconds.
    let auth = authenticator(port, Duration::from_secs(60), Duration::from_secs(600)).await;
    assert_eq!(auth.key_count(), 0);
    *body.lock().unwrap() = jwks(&[&key]).to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_empty_key_set_never_replaces_the_keys_in_use() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let stranger = SigningKey::generate(Algorithm::ES256, "who").unwrap();
    let body = Arc::new(Mutex::new(jwks(&[&key]).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;
    let auth = authenticator(port, Duration::from_millis(300), Duration::from_secs(600)).await;
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());

    // A misconfigured provider serves no keys; an unknown kid makes the gateway look.
    *body.lock().unwrap() = r#"{"keys":[]}"#.to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(auth.authenticate(Some(&bearer(&stranger))).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the empty set was fetched");
    assert_eq!(auth.key_count(), 1);
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());
}

#[tokio::test]
async fn a_jwks_answer_over_the_size_cap_is_refused() {
    use inferencehub_functions::auth::MAX_JWKS_BYTES;
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let set = jwks(&[&key]);
    // The same keys, padded past the cap with a member the parser would ignore.
    let padded = |n: usize| {
        let mut set = set.clone();
        set["padding"] = serde_json::Value::String("x".repeat(n));
        set.to_string()
    };
    let body = Arc::new(Mutex::new(padded(MAX_JWKS_BYTES)));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;
    let auth = authenticator(port, Duration::from_millis(300), Duration::from_secs(600)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(auth.key_count(), 0, "an oversized key set was installed");
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_err());

    // Under the cap, the same keys are taken.
    *body.lock().unwrap() = padded(1000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());
}

#[tokio::test]
async fn keys_past_their_maximum_age_are_not_trusted_while_refreshes_fail() {
    let key = SigningKey::generate(Algorithm::ES256, "k").unwrap();
    let body = Arc::new(Mutex::new(jwks(&[&key]).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let port = jwks_server(body.clone(), hits.clone()).await;
    let auth = Authenticator::new(auth_config(
        &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        &[
            ("IHUB_GATEWAY_JWKS_REFRESH", "200ms"),
            ("IHUB_GATEWAY_JWKS_MAX_AGE", "1s"),
        ],
    ))
    .await
    .unwrap();
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());

    // The provider breaks: refreshes fail, and the keys in use still answer until they
    // are older than the maximum age; then tokens are refused as the server's failure.
    *body.lock().unwrap() = "<html>maintenance</html>".to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let refused = auth.authenticate(Some(&bearer(&key))).await;
    assert!(matches!(refused, Err(AuthError::KeysStale)), "{refused:?}");

    // The provider is back: the next refresh (after the backoff) trusts the keys again.
    *body.lock().unwrap() = jwks(&[&key]).to_string();
    let mut back = false;
    for _ in 0..100 {
        if auth.authenticate(Some(&bearer(&key))).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the keys were never trusted again");
}
