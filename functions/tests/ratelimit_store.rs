//! The rate limiter against a DynamoDB endpoint that misbehaves on purpose (a real HTTP
//! server speaking DynamoDB's JSON protocol): a write the store refused is final, so a
//! timeout on a retry can never turn it into a fail-open; a timeout alone is retried once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inferencehub_devkit::dynamo::local_client;
use inferencehub_functions::ratelimit::{DynamoLimiter, Policy, RateLimiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake store does with the n-th request.
#[derive(Clone, Copy)]
enum Act {
    /// 400 ThrottlingException.
    Throttle,
    /// Reads the request and never answers.
    Hang,
    /// 200 with the counter at 1.
    Count,
}

/// A DynamoDB endpoint acting `script[n]` on the n-th request (the last act after that).
async fn store(script: Vec<Act>, hits: Arc<AtomicUsize>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (script, hits) = (script.clone(), hits.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0;
                loop {
                    // Headers, then a body of content-length bytes.
                    let n = match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    read += n;
                    let text = String::from_utf8_lossy(&buf[..read]).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if read < end + 4 + length {
                        continue;
                    }
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    let act = script[n.min(script.len() - 1)];
                    let (status, body) = match act {
                        Act::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Act::Throttle => (
                            "400 Bad Request",
                            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#,
                        ),
                        Act::Count => ("200 OK", r#"{"Attributes":{"hits":{"N":"1"}}}"#),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    read = 0;
                }
            });
        }
    });
    port
}

fn policy() -> Policy {
    Policy {
        name: "default".into(),
        limit: 10,
        window: Duration::from_secs(60),
    }
}

async fn limiter_over(script: Vec<Act>) -> (DynamoLimiter, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let port = store(script, hits.clone()).await;
    let client = local_client(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_millis(300),
    );
    (DynamoLimiter::new(client, "rate-limits"), hits)
}

#[tokio::test]
async fn a_refused_write_is_final_and_never_fails_open_on_a_later_timeout() {
    // Refused once, then the store hangs: one attempt, and the error is not transient (so
    // fail-open, when configured, does not apply).
    let (limiter, hits) = limiter_over(vec![Act::Throttle, Act::Hang]).await;
    let error = limiter
        .check("caller", &policy(), 1)
        .await
        .expect_err("a throttled write is not an admission");
    assert!(!error.transient, "{error:?}");
    assert!(error.message.contains("Throttling"), "{}", error.message);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the refused write was retried"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_once_and_a_second_one_may_fail_open() {
    let (limiter, hits) = limiter_over(vec![Act::Hang, Act::Count]).await;
    let decision = limiter.check("caller", &policy(), 1).await.unwrap();
    assert!(decision.allowed);
    assert_eq!(decision.remaining, 9);
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let (limiter, hits) = limiter_over(vec![Act::Hang]).await;
    let error = limiter.check("caller", &policy(), 1).await.unwrap_err();
    assert!(error.transient, "{error:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
