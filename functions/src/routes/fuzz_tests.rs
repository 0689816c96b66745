//! Generated inputs (proptest) through the real handlers, over the in-memory fakes:
//! arbitrary bytes, arbitrary JSON and request-shaped JSON with arbitrary values as the
//! body, arbitrary `Authorization` and `X-Request-Id` headers, and arbitrary problem
//! details. Whatever comes in: no panic, no 5xx, a problem+json body that says what is
//! wrong (naming the field for a bad body), and a sane request id.
//!
//! Cases per property: `IHUB_FUZZ_CASES` (default 1,000 per property in `cargo test`;
//! `make fuzz` runs 25,000 per property, 100,000 in all).

use http::HeaderMap;
use lambda_http::{Body, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::fakes::TestApp;
use crate::problem::Problem;
use inferencehub_proto::{ErrorKind, FieldError, is_sane_request_id};

fn runner() -> TestRunner {
    let cases = std::env::var("IHUB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn app() -> TestApp {
    // A limit no run reaches: every request must be judged on its content.
    TestApp::with_limit(u32::MAX)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

fn send(
    rt: &tokio::runtime::Runtime,
    app: &TestApp,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Body,
) -> Result<Answer, TestCaseError> {
    let mut req = http::Request::builder().method("POST").uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req: Request = req
        .body(body)
        .map_err(|e| TestCaseError::reject(e.to_string()))?;
    let response = rt.block_on(app.app.handle(req));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text)
            .map_err(|e| TestCaseError::fail(format!("status {status}: not JSON ({e}): {text}")))?,
        other => return Err(TestCaseError::fail(format!("a non-text body: {other:?}"))),
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// What every answer must be: no 5xx; a 4xx is problem+json with a consistent status, a
/// title and a detail, and the request id is one the logs can carry.
fn check_answer(a: &Answer) -> Result<(), TestCaseError> {
    prop_assert!(a.status < 500, "a 5xx: {} {}", a.status, a.body);
    let id = a.headers.get("x-request-id").and_then(|v| v.to_str().ok());
    prop_assert!(
        id.is_some_and(is_sane_request_id),
        "request id {id:?} on {}",
        a.status
    );
    if a.status >= 400 {
        prop_assert_eq!(
            a.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..])
        );
        prop_assert_eq!(a.body["status"].as_u64(), Some(u64::from(a.status)));
        prop_assert!(a.body["title"].is_string() && a.body["detail"].is_string());
    }
    Ok(())
}

/// A bad body is a 4xx that names the field at fault.
fn check_names_a_field(a: &Answer) -> Result<(), TestCaseError> {
    check_answer(a)?;
    if a.status >= 400 {
        let errors = a.body["errors"].as_array();
        prop_assert!(
            errors.is_some_and(|e| !e.is_empty()
                && e.iter()
                    .all(|e| e["field"].as_str().is_some_and(|f| !f.is_empty()))),
            "{} names no field: {}",
            a.status,
            a.body
        );
    }
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-10.0f64..10.0).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects with the request's own keys (and some others) holding arbitrary values, so
/// the generated bodies get past the JSON parser into validation.
fn request_shaped() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        Just(Value::from("iris")),
        Just(Value::from("sentiment")),
        ".{0,80}".prop_map(Value::String),
        json_value(),
    ];
    let features = prop_oneof![
        proptest::collection::vec(-1e3f64..1e3, 0..10)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::from).collect())),
        json_value(),
    ];
    let key = prop_oneof![
        Just("features".to_string()),
        Just("prompt".to_string()),
        Just("inputs".to_string()),
        Just("rows".to_string()),
        Just("tensors".to_string()),
        ".{0,10}",
    ];
    (
        model,
        proptest::option::of(features),
        proptest::collection::btree_map(key, json_value(), 0..3),
    )
        .prop_map(|(model, features, extra)| {
            let mut body = serde_json::Map::new();
            body.insert("model_name".into(), model);
            if let Some(features) = features {
                body.insert("features".into(), features);
            }
            body.extend(extra);
            Value::Object(body)
        })
}

#[test]
fn arbitrary_bytes_as_the_body_give_a_4xx_naming_a_field() {
    let (rt, app) = (runtime(), app());
    let token = format!("Bearer {}", app.token("predict"));
    runner()
        .run(&proptest::collection::vec(any::<u8>(), 0..1500), |bytes| {
            let a = send(
                &rt,
                &app,
                "/v1/predict",
                &[("authorization", token.as_bytes())],
                Body::Binary(bytes),
            )?;
            check_names_a_field(&a)
        })
        .unwrap();
}

#[test]
fn arbitrary_json_bodies_give_a_4xx_naming_a_field_or_a_prediction() {
    let (rt, app) = (runtime(), app());
    let token = format!("Bearer {}", app.token("predict"));
    let bodies = prop_oneof![json_value(), request_shaped()];
    runner()
        .run(&bodies, |body| {
            let a = send(
                &rt,
                &app,
                "/v1/predict",
                &[("authorization", token.as_bytes())],
                Body::Text(body.to_string()),
            )?;
            check_names_a_field(&a)?;
            if a.status < 300 {
                prop_assert!(a.body["label"].is_string() || a.body["results"].is_array());
            }
            Ok(())
        })
        .unwrap();
}

/// Bodies with the embeddings request's own keys holding arbitrary values.
fn embeddings_shaped() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("input".to_string()),
        Just("model".to_string()),
        Just("encoding_format".to_string()),
        Just("dimensions".to_string()),
        Just("truncate".to_string()),
        Just("user".to_string()),
        ".{0,10}",
    ];
    proptest::collection::btree_map(key, json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

#[test]
fn arbitrary_embeddings_bodies_give_a_4xx_naming_a_field() {
    let (rt, app) = (runtime(), app());
    let token = format!("Bearer {}", app.token("predict"));
    let bodies = prop_oneof![json_value(), embeddings_shaped()];
    runner()
        .run(&bodies, |body| {
            let a = send(
                &rt,
                &app,
                "/v1/embeddings",
                &[("authorization", token.as_bytes())],
                Body::Text(body.to_string()),
            )?;
            // The fake catalogue holds no embedding model: every body is refused, naming
            // a parameter, with OpenAI's error object beside it.
            check_names_a_field(&a)?;
            prop_assert!(a.status >= 400, "{}", a.body);
            prop_assert!(a.body["error"]["type"].is_string(), "{}", a.body);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_authorization_and_request_id_headers_give_401_or_a_sane_answer() {
    let (rt, app) = (runtime(), app());
    // Bytes a header value may hold: visible ASCII, tab and obs-text.
    let header_byte = prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')];
    let header = prop_oneof![
        proptest::collection::vec(header_byte.clone(), 0..200),
        "[ -~]{0,300}".prop_map(String::into_bytes),
        "(Bearer|bearer|Basic|) {0,3}[A-Za-z0-9_=-]{0,60}\\.?[A-Za-z0-9_=-]{0,200}\\.?[A-Za-z0-9_=-]{0,90}"
            .prop_map(String::into_bytes),
    ];
    let request_id = proptest::collection::vec(header_byte, 0..120);
    runner()
        .run(&(header, request_id), |(auth, id)| {
            // Bytes a header cannot hold are refused before the handler; skip those.
            if http::HeaderValue::from_bytes(&auth).is_err()
                || http::HeaderValue::from_bytes(&id).is_err()
            {
                return Err(TestCaseError::reject("not a header value"));
            }
            let a = send(
                &rt,
                &app,
                "/v1/predict",
                &[("authorization", &auth), ("x-request-id", &id)],
                Body::Text(r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#.into()),
            )?;
            check_answer(&a)?;
            prop_assert_eq!(a.status, 401, "{}", a.body);
            prop_assert!(a.headers.contains_key("www-authenticate"));
            Ok(())
        })
        .unwrap();
}

#[test]
fn problems_render_any_detail_and_field_as_json() {
    let kinds = prop_oneof![
        Just(ErrorKind::InvalidArgument),
        Just(ErrorKind::NotFound),
        Just(ErrorKind::Unavailable),
        Just(ErrorKind::Overloaded),
        Just(ErrorKind::Internal),
    ];
    let fields = proptest::collection::vec((".{0,40}", ".{0,200}"), 0..5);
    runner()
        .run(&(kinds, ".{0,500}", fields), |(kind, detail, fields)| {
            for problem in [
                Problem::new(kind, detail.clone()),
                Problem::invalid(
                    fields
                        .iter()
                        .map(|(f, m)| FieldError::new(f.clone(), m.clone()))
                        .collect(),
                ),
            ] {
                let status = problem.status();
                let response = problem.into_response("req-1");
                let Body::Text(text) = response.body() else {
                    return Err(TestCaseError::fail("a non-text problem"));
                };
                let body: Value = serde_json::from_str(text)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
                prop_assert_eq!(body["status"].as_u64(), Some(u64::from(status)));
                prop_assert!(body["detail"].is_string());
            }
            let body = Problem::new(kind, detail.clone()).into_response("r");
            let Body::Text(text) = body.body() else {
                return Err(TestCaseError::fail("a non-text problem"));
            };
            let body: Value = serde_json::from_str(text).unwrap_or_default();
            prop_assert_eq!(body["detail"].as_str(), Some(detail.as_str()));
            Ok(())
        })
        .unwrap();
}
