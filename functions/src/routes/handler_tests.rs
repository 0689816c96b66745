//! The handlers' own logic at their seams, with in-memory fakes for the worker and the
//! limiter (no DynamoDB, no candle): auth failures, validation, rate limits, worker errors
//! mapped to statuses, and the shared layer's headers on every route.

use http::HeaderMap;
use inferencehub_proto::{FieldError, invalid_argument};
use lambda_http::{Body, Request};
use serde_json::Value;
use tonic::{Code, Status};

use crate::fakes::{FakeLimiter, FakeWorker, TestApp};
use crate::worker::WorkerError;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn fields(&self) -> Vec<&str> {
        self.body["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }
}

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("x-request-id", "req-7");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req: Request = req.body(Body::Text(body.to_string())).unwrap();
    let response = app.app.handle(req).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    };
    if status >= 400 {
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["status"], status);
        assert_eq!(body["request_id"], "req-7");
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// A predict call with a plain `predict` token.
async fn predict(app: &TestApp, body: &str) -> Answer {
    call(
        app,
        "POST",
        "/v1/predict",
        Some(&app.token("predict")),
        body,
    )
    .await
}

const IRIS: &str = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;

fn calls(app: &TestApp) -> usize {
    app.worker.calls.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn every_route_gets_the_shared_headers() {
    let app = TestApp::with_worker(FakeWorker::default());
    let token = app.token("predict");
    for (method, path, auth) in [
        ("POST", "/v1/predict", true),
        ("GET", "/v1/models", true),
        ("GET", "/v1/models/iris", true),
        ("GET", "/healthz", false),
        ("GET", "/v1/predict", true),
        ("GET", "/nowhere", true),
    ] {
        let a = call(&app, method, path, auth.then_some(token.as_str()), IRIS).await;
        assert_eq!(a.header("x-request-id"), "req-7", "{method} {path}");
        if a.status != 404 {
            assert!(
                a.header("server-timing").contains("total;dur="),
                "{method} {path}"
            );
        }
    }
    let a = call(&app, "GET", "/v1/predict", Some(&token), "").await;
    assert_eq!((a.status, a.header("allow")), (405, "POST"));
    assert_eq!(call(&app, "GET", "/nowhere", None, "").await.status, 404);
    let a = call(&app, "GET", "/healthz", None, "").await;
    assert_eq!((a.status, a.header("cache-control")), (200, "no-store"));
    assert_eq!(call(&app, "HEAD", "/healthz", None, "").await.status, 200);
    let a = call(&app, "POST", "/v1/predict", Some(&token), IRIS).await;
    assert_eq!(a.status, 200);
    for step in ["auth;dur=", "ratelimit;dur=", "worker;dur=", "total;dur="] {
        assert!(
            a.header("server-timing").contains(step),
            "{}",
            a.header("server-timing")
        );
    }
    assert_eq!(a.body["request_id"], "req-7");
}

#[tokio::test]
async fn bad_credentials_are_refused_before_any_work() {
    let app = TestApp::with_worker(FakeWorker::default());
    let a = call(&app, "POST", "/v1/predict", None, IRIS).await;
    assert_eq!(
        (a.status, a.header("www-authenticate")),
        (401, "Bearer realm=\"inferencehub\"")
    );
    for token in ["garbage", &app.token("predict")[..40]] {
        let a = call(&app, "POST", "/v1/predict", Some(token), IRIS).await;
        assert_eq!(a.status, 401);
        assert!(a.header("www-authenticate").contains("invalid_token"));
    }
    let a = call(&app, "POST", "/v1/predict", Some(&app.token("read")), IRIS).await;
    assert_eq!(a.status, 403);
    assert!(a.header("www-authenticate").contains("insufficient_scope"));
    // A token restricted to other models may not use this one.
    let a = call(
        &app,
        "POST",
        "/v1/predict",
        Some(&app.token("predict model:sentiment")),
        IRIS,
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(
        a.header("www-authenticate")
            .contains("scope=\"model:iris\"")
    );
    let a = call(&app, "GET", "/v1/models", Some("garbage"), "").await;
    assert_eq!(a.status, 401);
    assert_eq!(calls(&app), 0);
}

#[tokio::test]
async fn invalid_bodies_name_the_field_and_use_no_quota() {
    let app = TestApp::with_worker(FakeWorker::default());
    let token = app.token("predict");
    for (body, field) in [
        ("", "body"),
        (
            r#"{"model_name":"iris","features":[1,2,3,4],"extra":1}"#,
            "extra",
        ),
        (
            r#"{"model_name":"iris","model_name":"iris","features":[1,2,3,4]}"#,
            "model_name",
        ),
        (
            r#"{"model_name":"iris","features":[1,2,null,4]}"#,
            "features[2]",
        ),
        (r#"{"model_name":"iris","features":[1,2,3]}"#, "features"),
        (
            r#"{"model_name":"sentiment","inputs":[{"prompt":"ok"},{"prompt":7}]}"#,
            "inputs[1].prompt",
        ),
        (
            r#"{"model_name":"sentiment","inputs":[{"prompt":"ok"},{"prompt":" "}]}"#,
            "inputs[1].prompt",
        ),
    ] {
        let a = call(&app, "POST", "/v1/predict", Some(&token), body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.fields(), [field], "{body}");
        assert_eq!(a.header("ratelimit"), "", "{body}: no quota used");
    }
    let a = call(
        &app,
        "POST",
        "/v1/predict",
        Some(&token),
        r#"{"model_name":"nope","prompt":"x"}"#,
    )
    .await;
    assert_eq!((a.status, a.fields()), (404, vec!["model_name"]));
    assert_eq!(calls(&app), 0);
}

#[tokio::test]
async fn the_limit_answers_429_with_retry_after() {
    let app = TestApp::with_limit(2);
    let token = app.token("predict");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let a = call(&app, "POST", "/v1/predict", Some(&token), IRIS).await;
        statuses.push(a.status);
        if a.status == 429 {
            assert!(a.header("retry-after").parse::<u64>().unwrap() >= 1);
            assert!(
                a.header("ratelimit").contains(";r=0;"),
                "{}",
                a.header("ratelimit")
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(calls(&app), 2);
}

#[tokio::test]
async fn a_limiter_outage_fails_closed_unless_told_otherwise() {
    let closed = TestApp::new(FakeWorker::default(), FakeLimiter::Down, 10, false);
    let a = predict(&closed, IRIS).await;
    assert_eq!((a.status, a.header("retry-after")), (503, "1"));
    assert_eq!(calls(&closed), 0);
    let open = TestApp::new(FakeWorker::default(), FakeLimiter::Down, 10, true);
    let a = predict(&open, IRIS).await;
    assert_eq!(a.status, 200);
    // Fail-open covers timeouts and transport failures only: a store that answers and
    // refuses (throttled, a bad key) never turns the limit off.
    let refusing = TestApp::new(FakeWorker::default(), FakeLimiter::Refusing, 10, true);
    let a = predict(&refusing, IRIS).await;
    assert_eq!((a.status, a.header("retry-after")), (503, "1"));
    assert_eq!(calls(&refusing), 0);
}

#[tokio::test]
async fn worker_errors_map_to_statuses() {
    for (error, status, retry_after) in [
        (
            WorkerError::new(Code::ResourceExhausted, "queue full"),
            503,
            "1",
        ),
        (
            WorkerError::new(Code::Unavailable, "tcp connect error 10.0.0.1"),
            503,
            "1",
        ),
        (
            WorkerError::new(Code::DeadlineExceeded, "worker deadline passed"),
            504,
            "",
        ),
        (
            WorkerError::new(Code::Internal, "CUDA out of memory at 0x7f"),
            502,
            "",
        ),
        (WorkerError::new(Code::NotFound, "gone"), 404, ""),
    ] {
        let message = error.message.clone();
        let app = TestApp::with_worker(FakeWorker::failing(error));
        let a = predict(&app, IRIS).await;
        assert_eq!(a.status, status, "{message}");
        assert_eq!(a.header("retry-after"), retry_after, "{message}");
        assert!(
            !a.body.to_string().contains(&message),
            "internals leak: {}",
            a.body
        );
    }
}

#[tokio::test]
async fn a_worker_bad_request_names_the_same_field() {
    // The status as the worker builds it, through its wire form and back.
    let wire = |errors: &[FieldError]| {
        let mut headers = http::HeaderMap::new();
        invalid_argument(errors).add_header(&mut headers).unwrap();
        WorkerError::from_status(&Status::from_header_map(&headers).unwrap())
    };
    // The gateway always calls the batch RPC; its fields come back in each protocol's terms.
    let app = TestApp::with_worker(FakeWorker::failing(wire(&[FieldError::new(
        "rows[0].features[2]",
        "must be finite",
    )])));
    let a = predict(&app, IRIS).await;
    assert_eq!((a.status, a.fields()), (400, vec!["features[2]"]));
    assert_eq!(a.body["errors"][0]["message"], "must be finite");

    let app = TestApp::with_worker(FakeWorker::failing(wire(&[FieldError::new(
        "prompts[1]",
        "too long",
    )])));
    let body = r#"{"model_name":"sentiment","inputs":[{"prompt":"a"},{"prompt":"b"}]}"#;
    let a = predict(&app, body).await;
    assert_eq!((a.status, a.fields()), (400, vec!["inputs[1].prompt"]));
}

#[tokio::test]
async fn models_and_health_follow_the_worker() {
    let app = TestApp::with_worker(FakeWorker::default());
    let only_iris = app.token("predict model:iris");
    let a = call(&app, "GET", "/v1/models", Some(&only_iris), "").await;
    assert_eq!(a.body["models"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(&app, "GET", "/v1/models/sentiment", Some(&only_iris), "")
            .await
            .status,
        404
    );
    let a = call(&app, "GET", "/v1/models/iris", Some(&only_iris), "").await;
    assert_eq!(
        (a.status, &a.body["input"]["features"]),
        (200, &Value::from(4))
    );

    let down = TestApp::with_worker(FakeWorker {
        down: true,
        ..FakeWorker::default()
    });
    let a = call(&down, "GET", "/healthz", None, "").await;
    assert_eq!((a.status, a.header("retry-after")), (503, "5"));
    let a = call(&down, "GET", "/v1/models", Some(&down.token("predict")), "").await;
    assert_eq!(a.status, 503);
}

#[tokio::test]
async fn the_model_metric_dimension_names_only_catalogued_models() {
    // A caller must not mint CloudWatch metrics (billed per metric) with made-up names.
    let app = TestApp::with_limit(10);
    let last_model =
        || crate::emf::EMITTED.with(|e| e.borrow().last().and_then(|m| m.model.clone()));
    let a = predict(&app, r#"{"model_name":"made-up-42","features":[1,2,3,4]}"#).await;
    assert_eq!(a.status, 404);
    assert_eq!(last_model().as_deref(), Some("_unknown"));
    let last_version =
        || crate::emf::EMITTED.with(|e| e.borrow().last().and_then(|m| m.version.clone()));
    assert_eq!(last_version(), None);
    let a = predict(&app, IRIS).await;
    assert_eq!(a.status, 200);
    assert_eq!(last_model().as_deref(), Some("iris"));
    // The version that answered is a dimension of its own (a canary's half is visible).
    let answered = a.body["model_version"].as_str().unwrap().to_string();
    assert_eq!(last_version(), Some(answered));
}

#[tokio::test]
async fn the_open_inference_protocol_routes_share_auth_limits_and_problems() {
    let app = TestApp::with_limit(5);
    let token = app.token("predict");
    // Health: no token, like /healthz.
    assert_eq!(
        call(&app, "GET", "/v2/health/live", None, "").await.status,
        200
    );
    let ready = call(&app, "GET", "/v2/health/ready", None, "").await;
    assert_eq!(
        (ready.status, &ready.body["ready"]),
        (200, &Value::from(true))
    );
    // The API's description is public and is the generated document.
    let a = call(&app, "GET", "/openapi.json", None, "").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        serde_json::from_str::<Value>(&crate::openapi::document()).unwrap()
    );
    // Everything else needs the token.
    let a = call(&app, "GET", "/v2", None, "").await;
    assert_eq!((a.status, a.body["error"].is_string()), (401, true));
    let a = call(&app, "GET", "/v2", Some(&token), "").await;
    assert_eq!(a.body["extensions"][0], "binary_tensor_data");
    let meta = call(&app, "GET", "/v2/models/iris", Some(&token), "").await;
    assert_eq!(meta.body["inputs"][0]["shape"], serde_json::json!([-1, 4]));
    assert_eq!(
        call(
            &app,
            "GET",
            "/v2/models/iris/versions/nope/ready",
            Some(&token),
            ""
        )
        .await
        .status,
        404
    );

    let infer = |rows: usize| {
        serde_json::json!({"id": "abc", "inputs": [{"name": "features", "shape": [rows, 4],
            "datatype": "FP32", "data": vec![1.0; rows * 4]}]})
        .to_string()
    };
    let a = call(
        &app,
        "POST",
        "/v2/models/iris/infer",
        Some(&token),
        &infer(3),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["id"], "abc");
    assert_eq!(a.body["outputs"][0]["shape"], serde_json::json!([3]));
    assert_eq!(calls(&app), 1, "one batch call for three rows");
    // The three rows cost three: two more fit the limit of 5, three do not.
    let a = call(
        &app,
        "POST",
        "/v2/models/iris/infer",
        Some(&token),
        &infer(3),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    // A bad request names its field and never reaches the worker.
    let a = call(
        &app,
        "POST",
        "/v2/models/iris/infer",
        Some(&token),
        &infer(0),
    )
    .await;
    assert_eq!((a.status, a.fields()), (400, vec!["inputs[0].shape"]));
    assert_eq!(a.body["error"], a.body["detail"]);
    let a = call(
        &app,
        "POST",
        "/v2/models/nope/infer",
        Some(&token),
        &infer(1),
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(calls(&app), 1);
}

/// One path for every protocol: the same inputs sent as v1 (single and batch) and as
/// Open Inference Protocol v2 (JSON and binary) make one limiter charge of their input
/// count and one identical worker call each.
#[tokio::test]
async fn the_same_input_through_every_protocol_makes_the_same_charge_and_call() {
    let app = TestApp::with_limit(100);
    let token = app.token("predict");
    let v2_json = serde_json::json!({"inputs": [{"name": "features", "shape": [1, 4],
        "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
    .to_string();
    let header = serde_json::json!({"inputs": [{"name": "features", "shape": [1, 4],
        "datatype": "FP32", "parameters": {"binary_data_size": 16}}]})
    .to_string();
    let mut v2_binary = header.clone().into_bytes();
    for x in [5.1f32, 3.5, 1.4, 0.2] {
        v2_binary.extend_from_slice(&x.to_le_bytes());
    }
    let v1_batch = r#"{"model_name":"iris","inputs":[{"features":[5.1,3.5,1.4,0.2]}]}"#;
    let sends: Vec<(&str, Body, Option<usize>)> = vec![
        ("/v1/predict", Body::Text(IRIS.into()), None),
        ("/v1/predict", Body::Text(v1_batch.into()), None),
        ("/v2/models/iris/infer", Body::Text(v2_json), None),
        (
            "/v2/models/iris/infer",
            Body::Binary(v2_binary),
            Some(header.len()),
        ),
    ];
    for (path, body, json_length) in sends {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("x-request-id", "same");
        if let Some(n) = json_length {
            req = req.header(crate::protocol::v2::HEADER_LENGTH, n);
        }
        let response = app.app.handle(req.body(body).unwrap()).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let charges = app.app.predict.limiter.charges();
    assert_eq!(charges, vec![("alice".to_string(), 1); 4]);
    let sent = app.worker.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|m| *m == sent[0]), "{sent:?}");
    assert_eq!(sent[0].rows[0].features, [5.1, 3.5, 1.4, 0.2]);
    assert_eq!(sent[0].request_id, "same");
}

/// A model name that could add `WWW-Authenticate` parameters or unbounded metric
/// dimensions is refused before anything else looks at it, in either protocol, naming where
/// the request put it.
#[tokio::test]
async fn model_names_outside_the_allowed_set_are_refused_in_every_protocol() {
    let app = TestApp::with_limit(100);
    let token = app.token("predict");
    let long = "m".repeat(65);
    for name in ["", "iris\", scope=\"x", "a,b", "a b", long.as_str(), "ïris"] {
        let body = serde_json::json!({"model_name": name, "features": [1, 2, 3, 4]});
        let a = predict(&app, &body.to_string()).await;
        assert_eq!(
            (a.status, a.fields()),
            (400, vec!["model_name"]),
            "{name:?}"
        );
    }
    for name in ["a,b", "x%22y", long.as_str()] {
        let path = format!("/v2/models/{name}/infer");
        let body =
            r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let a = call(&app, "POST", &path, Some(&token), body).await;
        assert_eq!((a.status, a.fields()), (400, vec!["name"]), "{name:?}");
    }
    assert_eq!(calls(&app), 0);
    assert!(app.app.predict.limiter.charges().is_empty());
}

/// An answer is bounded before any quota is spent or the worker runs: a batch whose answer
/// the model's signature puts over `IHUB_GATEWAY_MAX_ANSWER_BYTES` is refused with 400,
/// naming the inputs (v1) or the outputs asked for (v2) and how many inputs fit.
#[tokio::test]
async fn an_answer_over_the_size_limit_is_refused_before_the_worker_runs() {
    let mut app = TestApp::with_limit(100);
    // iris: label, probability and three scores, about 435 bytes an input.
    app.app.predict.api.max_answer_bytes = 1_000;
    let batch = |n: usize| {
        let inputs: Vec<Value> = (0..n)
            .map(|_| serde_json::json!({"features": [5.1, 3.5, 1.4, 0.2]}))
            .collect();
        serde_json::json!({"model_name": "iris", "inputs": inputs}).to_string()
    };
    let refused = predict(&app, &batch(3)).await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.fields(), vec!["inputs"]);
    let detail = refused.body["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("at most 2 inputs"), "{detail}");
    let token = app.token("predict");
    let v2 = serde_json::json!({
        "inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2, 5.1, 3.5, 1.4, 0.2, 5.1, 3.5, 1.4, 0.2]}],
        "outputs": [{"name": "scores"}]
    });
    let refused = call(
        &app,
        "POST",
        "/v2/models/iris/infer",
        Some(&token),
        &v2.to_string(),
    )
    .await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.fields(), vec!["outputs[0].name"]);
    assert_eq!(calls(&app), 0, "the worker ran");
    assert!(app.app.predict.limiter.charges().is_empty(), "quota spent");
    // Two fit.
    assert_eq!(predict(&app, &batch(2)).await.status, 200);
    assert_eq!(calls(&app), 1);
}
