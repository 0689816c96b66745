//! The gateway end to end: real HTTP into the same handlers and layers the Lambda binaries
//! run, a real DynamoDB-compatible server (dynalite), a real worker with the demo models
//! over mutual TLS, and real signed tokens. The handlers' own branches (scopes, fail-open,
//! each worker error) are unit-tested against fakes in `functions/src/routes`; these tests
//! prove the parts work together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{AUDIENCE, ISSUER, Options, Stack, json};
use inferencehub_devkit::keys::claims;
use serde_json::json;

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn assert_problem(r: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status, "{r:?}");
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let body = json(r).await;
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:inferencehub:problem:")
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn predicts_both_demo_models_through_the_gateway() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.keys.token("alice", "predict");

    let r = stack
        .http
        .post(format!("{}/v1/predict", stack.url))
        .bearer_auth(&token)
        .header("x-request-id", "trace-123")
        .body(r#"{"model_name":"sentiment","prompt":"I love this, it works perfectly!"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-request-id"), "trace-123");
    let timing = header(&r, "server-timing");
    for part in ["auth;dur=", "ratelimit;dur=", "worker;dur=", "total;dur="] {
        assert!(timing.contains(part), "{timing}");
    }
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=1000;w=3600");
    assert!(
        header(&r, "ratelimit").starts_with("\"default\";r=999;t="),
        "{}",
        header(&r, "ratelimit")
    );
    let body = json(r).await;
    assert_eq!(body["label"], "positive");
    assert_eq!(body["model_name"], "sentiment");
    assert_eq!(body["request_id"], "trace-123");
    assert_eq!(body["model_version"].as_str().unwrap().len(), 12);
    assert!(body["latency_ms"].as_f64().unwrap() > 0.0);
    let p = body["probability"].as_f64().unwrap();
    assert_eq!(body["scores"]["positive"].as_f64().unwrap(), p);

    let r = stack
        .post(Some(&token), r#"{"model_name":"sentiment","prompt":"Terrible. It broke on day one and support ignored me."}"#)
        .await;
    assert_eq!(json(r).await["label"], "negative");

    let r = stack
        .post(
            Some(&token),
            r#"{"model_name":"iris","features":[6.3,3.3,6.0,2.5]}"#,
        )
        .await;
    let body = json(r).await;
    assert_eq!(body["label"], "virginica");
    assert_eq!(body["scores"].as_object().unwrap().len(), 3);

    // Batch form.
    let r = stack
        .post(
            Some(&token),
            r#"{"model_name":"iris","inputs":[{"features":[5.1,3.5,1.4,0.2]},{"features":[7.0,3.2,4.7,1.4]}]}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let labels: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["setosa", "versicolor"]);

    // Catalogue and health.
    let r = stack.get("/v1/models", Some(&token)).await;
    let names: Vec<String> = json(r).await["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["columns", "digits", "iris", "minilm", "sentiment", "wine"]
    );
    let iris = json(stack.get("/v1/models/iris", Some(&token)).await).await;
    assert_eq!(iris["kind"], "tabular");
    assert_eq!(iris["input"]["features"], 4);
    assert_eq!(iris["labels"], json!(["setosa", "versicolor", "virginica"]));
    assert_eq!(iris["task"], "classification");
    assert_eq!(iris["tensor"]["shape"], json!([-1, 4]));

    // The scikit-learn forest, exported with skl2onnx, served unchanged.
    let wine = json(stack.get("/v1/models/wine", Some(&token)).await).await;
    assert_eq!(wine["input"]["features"], 13);
    assert_eq!(wine["input"]["feature_names"][0], "alcohol");
    assert_eq!(
        wine["labels"],
        json!(["cultivar_1", "cultivar_2", "cultivar_3"])
    );
    assert_eq!(wine["tensor"]["name"], "X");
    let r = stack
        .post(
            Some(&token),
            r#"{"model_name":"wine","features":[13.32,3.24,2.38,21.5,92,1.93,0.76,0.45,1.25,8.42,0.55,1.62,650]}"#,
        )
        .await;
    let body = json(r).await;
    assert_eq!(body["label"], "cultivar_3", "{body}");
    let r = stack
        .post(
            Some(&token),
            r#"{"model_name":"wine","features":[14.23,1.71,2.43,15.6,127,2.8,3.06,0.28,2.29,5.64,1.04,3.92,1065]}"#,
        )
        .await;
    assert_eq!(json(r).await["label"], "cultivar_1");
    assert_problem(stack.get("/v1/models/nope", Some(&token)).await, 404).await;
    assert_problem(stack.get("/v1/models", None).await, 401).await;
    let r = stack.get("/healthz", None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401() {
    let stack = Stack::start(Options::default()).await;
    let body = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let keys = &stack.keys;
    let good = claims(ISSUER, AUDIENCE, "mallory", "predict", 300, None);

    // Each supported algorithm works.
    for key in [&keys.es, &keys.rs, &keys.ed] {
        let r = stack.post(Some(&key.sign(&good).unwrap()), body).await;
        assert_eq!(r.status(), 200, "{:?}", key.alg);
    }
    // A hand-built header signs as well as jsonwebtoken's (the crit case below relies on it).
    let plain = keys
        .es
        .sign_with_header(&json!({"alg": "ES256", "typ": "JWT", "kid": "es-1"}), &good)
        .unwrap();
    assert_eq!(stack.post(Some(&plain), body).await.status(), 200);

    // No token: a challenge without an error code.
    let r = stack.post(None, body).await;
    assert_eq!(
        header(&r, "www-authenticate"),
        "Bearer realm=\"inferencehub\""
    );
    assert_problem(r, 401).await;

    let segment = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        segment(&json!({"alg": "none", "typ": "JWT", "kid": "es-1"})),
        segment(&good)
    );
    // HS256 with the RSA public key as the HMAC secret (the classic confusion attack).
    let rsa_public = keys.rs.jwk.to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("rs-1".into());
    let hmac = jsonwebtoken::encode(
        &hs_header,
        &good,
        &jsonwebtoken::EncodingKey::from_secret(rsa_public.as_bytes()),
    )
    .unwrap();
    let forged = keys.stranger.sign(&good).unwrap(); // right kid, wrong key
    let valid = keys.es.sign(&good).unwrap();
    let mut parts: Vec<&str> = valid.split('.').collect();
    let tampered_payload = segment(&claims(ISSUER, AUDIENCE, "root", "predict", 300, None));
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let unknown_kid = inferencehub_devkit::keys::SigningKey::generate(
        jsonwebtoken::Algorithm::ES256,
        "who-is-this",
    )
    .unwrap()
    .sign(&good)
    .unwrap();
    let mut expired = good.clone();
    expired["exp"] = json!(good["iat"].as_i64().unwrap() - 120);
    let mut future = good.clone();
    future["nbf"] = json!(good["iat"].as_i64().unwrap() + 600);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let wrong_iss = claims("https://evil.test", AUDIENCE, "m", "predict", 300, None);
    let wrong_aud = claims(ISSUER, "someone-else", "m", "predict", 300, None);
    // Correctly signed, but its header marks parameters critical (RFC 7515 crit): the
    // gateway understands no extension, so it must refuse the token.
    let critical = keys
        .es
        .sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": "es-1", "crit": ["exp"]}),
            &good,
        )
        .unwrap();

    let cases = [
        ("alg none", alg_none),
        ("HS256 with public key", hmac),
        ("forged signature", forged),
        ("tampered payload", tampered),
        ("unknown kid", unknown_kid),
        ("expired", keys.es.sign(&expired).unwrap()),
        ("not yet valid", keys.es.sign(&future).unwrap()),
        ("no exp", keys.es.sign(&no_exp).unwrap()),
        ("wrong issuer", keys.es.sign(&wrong_iss).unwrap()),
        ("wrong audience", keys.es.sign(&wrong_aud).unwrap()),
        ("garbage", "not-a-jwt".to_string()),
        ("critical header parameter", critical),
    ];
    let calls_before = stack.worker_calls().await;
    for (case, token) in cases {
        let r = stack.post(Some(&token), body).await;
        let challenge = header(&r, "www-authenticate");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{case}: {challenge}"
        );
        let problem = assert_problem(r, 401).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{case}");
    }
    assert_eq!(
        stack.worker_calls().await,
        calls_before,
        "refused requests reached the worker"
    );
}

#[tokio::test]
async fn invalid_requests_get_400_404_413_and_never_reach_the_worker() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.keys.token("carol", "predict");
    let cases = [
        ("{", "body"),
        ("[]", "body"),
        (
            r#"{"model_name":"iris","features":[1,2,3,4],"extra":1}"#,
            "extra",
        ),
        (r#"{"model_name":"iris","features":"1,2,3,4"}"#, "features"),
        (
            r#"{"model_name":"iris","features":[1,2,"x",4]}"#,
            "features[2]",
        ),
        (r#"{"model_name":"iris","features":[1,2,3]}"#, "features"),
        (
            r#"{"model_name":"iris","features":[1,2,3,1e300]}"#,
            "features[3]",
        ),
        (r#"{"model_name":"iris","prompt":"hello"}"#, "prompt"),
        (r#"{"model_name":"sentiment","prompt":""}"#, "prompt"),
        (r#"{"model_name":"sentiment","prompt":"  "}"#, "prompt"),
        (r#"{"model_name":"sentiment","features":[1]}"#, "features"),
        (r#"{"features":[1,2,3,4]}"#, "model_name"),
        (
            r#"{"model_name":"sentiment","inputs":[{"prompt":"ok"},{"prompt":""}]}"#,
            "inputs[1].prompt",
        ),
    ];
    let calls_before = stack.worker_calls().await;
    for (body, field) in cases {
        let r = stack.post(Some(&token), body).await;
        assert!(
            header(&r, "ratelimit").is_empty(),
            "{body}: invalid requests do not use quota"
        );
        let problem = assert_problem(r, 400).await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}: {problem}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{body}: {problem}");
    }
    let long_prompt = json!({"model_name": "sentiment", "prompt": "x".repeat(20_000)}).to_string();
    let problem = assert_problem(stack.post(Some(&token), &long_prompt).await, 400).await;
    assert_eq!(problem["errors"][0]["field"], "prompt");

    let problem = assert_problem(
        stack
            .post(Some(&token), r#"{"model_name":"nope","prompt":"x"}"#)
            .await,
        404,
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "model_name");

    let huge = json!({"model_name": "sentiment", "prompt": "y".repeat(70 * 1024)}).to_string();
    assert_problem(stack.post(Some(&token), &huge).await, 413).await;

    let r = stack.get("/v1/predict", Some(&token)).await;
    assert_eq!(header(&r, "allow"), "POST");
    assert_problem(r, 405).await;

    assert_eq!(
        stack.worker_calls().await,
        calls_before,
        "invalid requests reached the worker"
    );
}

#[tokio::test]
async fn the_limit_is_exact_under_concurrency() {
    let stack = Stack::start(Options {
        limit: 10,
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("dave", "predict");
    let body = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let responses =
        futures::future::join_all((0..40).map(|_| stack.post(Some(&token), body))).await;
    let mut ok = 0;
    let mut limited = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = header(&r, "retry-after").parse().unwrap();
                assert!((1..=3600).contains(&retry));
                assert!(header(&r, "ratelimit").contains(";r=0;"), "{r:?}");
                assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=10;w=3600");
                assert_problem(r, 429).await;
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 30));

    // Another caller has a budget of its own; a tier claim raises the limit.
    assert_eq!(
        stack
            .post(Some(&stack.keys.token("erin", "predict")), body)
            .await
            .status(),
        200
    );
    let pro = stack
        .keys
        .es
        .sign(&claims(
            ISSUER,
            AUDIENCE,
            "dave",
            "predict",
            300,
            Some("pro"),
        ))
        .unwrap();
    let r = stack.post(Some(&pro), body).await;
    assert_eq!(header(&r, "ratelimit-policy"), "\"pro\";q=20;w=3600");
}

#[tokio::test]
async fn an_unreachable_dynamodb_fails_closed_by_default() {
    let stack = Stack::start(Options {
        dynamo_down: true,
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("frank", "predict");
    let body = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let r = tokio::time::timeout(Duration::from_secs(10), stack.post(Some(&token), body))
        .await
        .expect("answered, not hung");
    assert!(!header(&r, "retry-after").is_empty());
    assert_problem(r, 503).await;
}

#[tokio::test]
async fn a_worker_that_is_down_gives_503_within_the_deadline() {
    let stack = Stack::start(Options {
        worker_down: true,
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("heidi", "predict");
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        stack.post(
            Some(&token),
            r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#,
        ),
    )
    .await
    .expect("answered, not hung");
    let problem = assert_problem(r, 503).await;
    assert!(
        !problem["detail"].as_str().unwrap().contains("tcp"),
        "no internals leak: {problem}"
    );
    let r = stack.get("/healthz", None).await;
    assert_problem(r, 503).await;
    // Many callers at once are all answered too, not queued behind each other.
    let body = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let all = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join_all((0..10).map(|_| stack.post(Some(&token), body))),
    )
    .await
    .expect("answered, not hung");
    assert!(all.iter().all(|r| r.status() == 503));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// What a framework predicted for held-out rows (see tools/python/make_onnx_fixtures.py).
#[derive(serde::Deserialize)]
struct Expected {
    inputs: Vec<Vec<f32>>,
    #[serde(default)]
    probabilities: Vec<Vec<f64>>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<f64>>,
}

/// The stack serving the fixture folders `names` of `fixtures` (linked into a model
/// folder that lives as long as the first value).
async fn serving(fixtures: &std::path::Path, names: &[&str]) -> (tempfile::TempDir, Stack) {
    let models = tempfile::tempdir().unwrap();
    for name in names {
        std::os::unix::fs::symlink(fixtures.join(name), models.path().join(name)).unwrap();
    }
    let stack = Stack::start(Options {
        model_dir: Some(models.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    (models, stack)
}

#[tokio::test]
async fn exports_from_every_framework_answer_through_the_gateway() {
    let fixtures = common::root().join("gpu-worker/tests/fixtures/onnx");
    // Every exporter fixture, served by one worker behind the gateway.
    let mut all: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    all.sort();
    assert!(all.len() >= 18, "{all:?}");
    let names: Vec<&str> = all.iter().map(String::as_str).collect();
    let (_models, stack) = serving(&fixtures, &names).await;
    let token = stack.keys.token("alice", "predict");
    for name in names {
        let expected: Expected = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        let inputs: Vec<serde_json::Value> = expected
            .inputs
            .iter()
            .take(8)
            .map(|row| json!({ "features": row }))
            .collect();
        let r = stack
            .post(
                Some(&token),
                &json!({"model_name": name, "inputs": inputs}).to_string(),
            )
            .await;
        assert_eq!(r.status(), 200, "{name}");
        let body = json(r).await;
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 8);
        for (i, result) in results.iter().enumerate() {
            if expected.values.is_empty() {
                assert_eq!(result["label"], expected.labels[i], "{name} row {i}");
                let probability = result["probability"].as_f64().unwrap();
                let best = expected.probabilities[i]
                    .iter()
                    .copied()
                    .fold(f64::MIN, f64::max);
                assert!((probability - best).abs() < 1e-5, "{name} row {i}");
                assert!(result.get("values").is_none());
            } else {
                let value = result["values"][0].as_f64().unwrap();
                let want = expected.values[i][0];
                assert!((value - want).abs() <= 1e-5 * want.abs(), "{name} row {i}");
                assert!(result.get("label").is_none(), "{result}");
            }
        }
        // The graph's signature is enforced at the gateway: one feature short is a 400.
        let short = &expected.inputs[0][1..];
        let r = stack
            .post(
                Some(&token),
                &json!({"model_name": name, "features": short}).to_string(),
            )
            .await;
        let problem = assert_problem(r, 400).await;
        assert!(problem.to_string().contains("features"), "{problem}");
    }
    let r = stack
        .get("/v1/models/xgboost-regressor", Some(&token))
        .await;
    let model = json(r).await;
    assert_eq!(model["task"], "regression");
    assert_eq!(model["values"], 1);
    assert_eq!(model["labels"], json!([]));
}

/// The text model in `dir`, loaded in this process as the worker loads it.
fn loaded_in_process(dir: &std::path::Path) -> inferencehub_worker::models::LoadedModel {
    use inferencehub_worker::models::{LoadOptions, load_model};
    let options = LoadOptions {
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        max_prompt_bytes: 4096,
    };
    load_model(dir, "in-process", &options).unwrap()
}

/// The probabilities `model` gives `prompt` alone.
fn answered_in_process(
    model: &mut inferencehub_worker::models::LoadedModel,
    prompt: &str,
) -> Vec<f64> {
    let input = model.prepare(prompt, &[]).unwrap();
    let mut answers = model.model.forward(&[input]).unwrap();
    answers.remove(0).row.into_iter().map(f64::from).collect()
}

/// A transformer exported to ONNX answers prompts through the gateway as transformers
/// answered them; its int8 copy as the same graph answers in process (int8 answers depend
/// on the CPU; the worker's `onnx_text` test holds those to ONNX Runtime's own).
#[tokio::test]
async fn a_transformer_export_answers_prompts_through_the_gateway() {
    #[derive(serde::Deserialize)]
    struct Case {
        prompt: String,
        logits: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<Case>,
    }
    let fixtures = common::root().join("gpu-worker/tests/fixtures/onnx-text");
    let (_models, stack) = serving(&fixtures, &["bert-onnx", "bert-onnx-int8"]).await;
    let token = stack.keys.token("alice", "predict");
    for name in ["bert-onnx", "bert-onnx-int8"] {
        let expected: Cases = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        // The int8 copy's answers come from the same graph run in this process, loaded once.
        let mut in_process =
            (name == "bert-onnx-int8").then(|| loaded_in_process(&fixtures.join(name)));
        for case in &expected.cases {
            let r = stack
                .post(
                    Some(&token),
                    &json!({"model_name": name, "prompt": case.prompt}).to_string(),
                )
                .await;
            assert_eq!(r.status(), 200, "{name}");
            let body = json(r).await;
            let want = if let Some(model) = in_process.as_mut() {
                answered_in_process(model, &case.prompt)
            } else {
                let max = case.logits.iter().copied().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = case.logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                exps.iter().map(|e| e / sum).collect()
            };
            let p = want.iter().copied().fold(f64::MIN, f64::max);
            let best = want.iter().position(|&w| w == p).unwrap();
            let label = ["negative", "neutral", "positive"][best];
            assert_eq!(body["label"], label, "{name} {:?}", case.prompt);
            let probability = body["probability"].as_f64().unwrap();
            assert!(
                (probability - p).abs() < 1e-5,
                "{name}: {body}, expected {p}"
            );
        }
    }
    // The gateway refuses what the model cannot take, naming the field.
    let r = stack
        .post(
            Some(&token),
            &json!({"model_name": "bert-onnx", "features": [1.0, 2.0]}).to_string(),
        )
        .await;
    let problem = assert_problem(r, 400).await;
    assert!(problem.to_string().contains("prompt"), "{problem}");
}

/// A tensor as the named-input fixtures' `expected.json` writes it.
#[derive(Clone, serde::Deserialize)]
struct JsonTensor {
    datatype: String,
    shape: Vec<usize>,
    data: Vec<serde_json::Value>,
}

/// A named-input fixture's inputs and reference answers (see
/// tools/python/make_onnx_tensor_fixtures.py).
#[derive(serde::Deserialize)]
struct NamedExpected {
    inputs: std::collections::BTreeMap<String, JsonTensor>,
    #[serde(default)]
    probabilities: Vec<Vec<f64>>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    outputs: std::collections::BTreeMap<String, JsonTensor>,
}

/// Little-endian bytes of JSON elements of `datatype` (the binary extension's layout).
fn binary(t: &JsonTensor) -> Vec<u8> {
    let mut out = Vec::new();
    for v in &t.data {
        match t.datatype.as_str() {
            "BYTES" => {
                let s = v.as_str().unwrap();
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            "BOOL" => out.push(u8::from(v.as_bool().unwrap())),
            "UINT8" => out.push(v.as_u64().unwrap() as u8),
            "INT8" => out.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
            "INT32" => out.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "FP16" => out.extend(half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().unwrap().to_le_bytes()),
            other => panic!("{other}"),
        }
    }
    out
}

/// Models with named inputs of every element type answer through the gateway: OIP v2 in
/// JSON and binary, and v1's named values; what does not fit the signature is a 400 that
/// names the input, with no quota spent and no worker call.
#[tokio::test]
async fn named_inputs_of_every_type_answer_through_the_gateway() {
    let fixtures = common::root().join("gpu-worker/tests/fixtures/onnx-tensors");
    let read = |name: &str| -> NamedExpected {
        serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(name).join("expected.json")).unwrap(),
        )
        .unwrap()
    };
    let (_models, stack) = serving(&fixtures, &["sklearn-column-transformer", "typed-graph"]).await;
    let token = stack.keys.token("alice", "predict");
    let json_header = [("content-type", "application/json".to_string())];

    // The pipeline over named columns, OIP v2 JSON: the answer and the exporter's label.
    let pipeline = read("sklearn-column-transformer");
    let inputs: Vec<_> = pipeline
        .inputs
        .iter()
        .map(|(name, t)| json!({"name": name, "datatype": t.datatype, "shape": t.shape, "data": t.data}))
        .collect();
    let r = stack
        .post_to(
            "/v2/models/sklearn-column-transformer/infer",
            Some(&token),
            &json_header,
            json!({"inputs": inputs}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let outputs = body["outputs"].as_array().unwrap();
    let by_name = |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap().clone();
    assert_eq!(by_name("label")["data"], json!(pipeline.labels));
    assert_eq!(by_name("output_label")["data"], json!(pipeline.labels));
    assert_eq!(by_name("output_label")["datatype"], "BYTES");
    let scores = by_name("scores")["data"].as_array().unwrap().clone();
    for (got, want) in scores.iter().zip(pipeline.probabilities.iter().flatten()) {
        assert!((got.as_f64().unwrap() - want).abs() <= 1e-5);
    }

    // The same rows through v1, each input's columns by name.
    let rows: Vec<_> = (0..pipeline.labels.len())
        .map(|r| {
            let tensors: serde_json::Map<String, serde_json::Value> = pipeline
                .inputs
                .iter()
                .map(|(name, t)| (name.clone(), json!([t.data[r]])))
                .collect();
            json!({"tensors": tensors})
        })
        .collect();
    let r = stack
        .post(
            Some(&token),
            &json!({"model_name": "sklearn-column-transformer", "inputs": rows}).to_string(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let labels: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, pipeline.labels);

    // Every element type in the binary extension, every output back in binary.
    let typed = read("typed-graph");
    let mut header_inputs = Vec::new();
    let mut payload = Vec::new();
    for (name, t) in &typed.inputs {
        let bytes = binary(t);
        header_inputs.push(
            json!({"name": name, "datatype": t.datatype, "shape": t.shape,
            "parameters": {"binary_data_size": bytes.len()}}),
        );
        payload.extend(bytes);
    }
    let head =
        json!({"inputs": header_inputs, "parameters": {"binary_data_output": true}}).to_string();
    let mut request = head.clone().into_bytes();
    request.extend(payload);
    let r = stack
        .post_to(
            "/v2/models/typed-graph/infer",
            Some(&token),
            &[
                ("content-type", "application/octet-stream".to_string()),
                ("inference-header-content-length", head.len().to_string()),
            ],
            request,
        )
        .await;
    assert_eq!(r.status(), 200);
    let n: usize = header(&r, "inference-header-content-length")
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&bytes[..n]).unwrap();
    let mut offset = n;
    for output in answer["outputs"].as_array().unwrap() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let got = &bytes[offset..offset + size];
        offset += size;
        let name = output["name"].as_str().unwrap();
        let Some(want) = typed.outputs.get(name) else {
            continue;
        };
        assert_eq!(output["datatype"], want.datatype, "{name}");
        assert_eq!(output["shape"], json!(want.shape), "{name}");
        if want.datatype == "FP32" {
            for (g, w) in got.chunks_exact(4).zip(&want.data) {
                let g = f32::from_le_bytes([g[0], g[1], g[2], g[3]]) as f64;
                let w = w.as_f64().unwrap();
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{name}: {g} vs {w}"
                );
            }
        } else {
            assert_eq!(got, binary(want), "{name}");
        }
    }
    assert_eq!(offset, bytes.len());

    // The metadata lists every input's type and shape, and the named outputs.
    let r = stack.get("/v2/models/typed-graph", Some(&token)).await;
    let metadata = json(r).await;
    let seq = metadata["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "seq")
        .unwrap()
        .clone();
    assert_eq!(
        seq,
        json!({"name": "seq", "datatype": "INT64", "shape": [-1, -1]})
    );
    assert!(metadata["outputs"].to_string().contains("half_echo"));

    // Misfits are refused before any quota is spent or any worker call is made.
    let calls = stack.worker_calls().await;
    let v2_json =
        |inputs: Vec<serde_json::Value>| json!({"inputs": inputs}).to_string().into_bytes();
    let typed_json = |name: &str, t: &JsonTensor| json!({"name": name, "datatype": t.datatype, "shape": t.shape, "data": t.data});
    let mut wrong_type: Vec<_> = typed.inputs.iter().map(|(n, t)| typed_json(n, t)).collect();
    let count = typed.inputs.keys().position(|k| k == "count").unwrap();
    wrong_type[count]["datatype"] = json!("INT64");
    let mut missing: Vec<_> = typed.inputs.iter().map(|(n, t)| typed_json(n, t)).collect();
    missing.remove(0);
    for (body, field) in [
        (v2_json(wrong_type), format!("inputs[{count}].datatype")),
        (v2_json(missing), "inputs".to_string()),
    ] {
        let r = stack
            .post_to(
                "/v2/models/typed-graph/infer",
                Some(&token),
                &json_header,
                body,
            )
            .await;
        let problem = assert_problem(r, 400).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let r = stack
        .post(
            Some(&token),
            &json!({"model_name": "sklearn-column-transformer",
                "inputs": [{"tensors": {"age": [30], "income": [1.0], "city": ["oslo"]}},
                           {"tensors": {"age": [30], "income": [1.0]}}]})
            .to_string(),
        )
        .await;
    let problem = assert_problem(r, 400).await;
    assert_eq!(
        problem["errors"][0]["field"], "inputs[1].tensors.city",
        "{problem}"
    );
    assert_eq!(
        stack.worker_calls().await,
        calls,
        "no worker call for a misfit"
    );
    let r = stack
        .get("/v1/models/sklearn-column-transformer", Some(&token))
        .await;
    let model = json(r).await;
    assert_eq!(
        model["inputs"][2],
        json!({"name": "city", "datatype": "BYTES", "shape": [-1, 1]})
    );
}

/// Embedding models answer OpenAI's embeddings API through the gateway (float and base64,
/// `dimensions`, token usage, truncation), OIP v2 (`embedding`) and v1 (`values`); refusals
/// carry OpenAI's error object with the status its client maps to the usual exception.
#[tokio::test]
async fn embeddings_answer_in_openais_format_through_the_gateway() {
    #[derive(serde::Deserialize)]
    struct Case {
        prompt: String,
        input_ids: Vec<u32>,
        embedding: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<Case>,
    }
    let root = common::root().join("gpu-worker/tests/fixtures");
    let models = tempfile::tempdir().unwrap();
    for (dir, name) in [
        ("embeddings", "bert-mean"),
        ("embeddings", "bert-cls"),
        ("onnx-text", "bert-onnx"),
    ] {
        std::os::unix::fs::symlink(root.join(dir).join(name), models.path().join(name)).unwrap();
    }
    let stack = Stack::start(Options {
        model_dir: Some(models.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("alice", "predict");
    let headers = [("content-type", "application/json".to_string())];
    let embed = |token: String, body: serde_json::Value| {
        let stack = &stack;
        let headers = &headers;
        async move {
            stack
                .post_to(
                    "/v1/embeddings",
                    Some(&token),
                    headers,
                    body.to_string().into_bytes(),
                )
                .await
        }
    };
    let read = |name: &str| -> Cases {
        serde_json::from_str(
            &std::fs::read_to_string(root.join("embeddings").join(name).join("expected.json"))
                .unwrap(),
        )
        .unwrap()
    };
    let close = |got: &serde_json::Value, want: &[f64]| {
        let got: Vec<f64> = serde_json::from_value(got.clone()).unwrap();
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4)
    };

    for name in ["bert-mean", "bert-cls"] {
        let want = read(name);
        let texts: Vec<&str> = want.cases.iter().map(|c| c.prompt.as_str()).collect();
        let r = embed(token.clone(), json!({"model": name, "input": texts})).await;
        assert_eq!(r.status(), 200, "{name}");
        let body = json(r).await;
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], name);
        let tokens: usize = want.cases.iter().map(|c| c.input_ids.len()).sum();
        assert_eq!(body["usage"]["prompt_tokens"], tokens);
        assert_eq!(body["usage"]["total_tokens"], tokens);
        for (i, case) in want.cases.iter().enumerate() {
            let item = &body["data"][i];
            assert_eq!(
                (item["object"].as_str(), item["index"].as_u64()),
                (Some("embedding"), Some(i as u64))
            );
            assert!(
                close(&item["embedding"], &case.embedding),
                "{name} {i}: {item}"
            );
            assert_eq!(item["truncated"], false);
        }
    }

    // One string, base64 (what the openai client asks for), cut to 8 dimensions.
    let want = read("bert-mean");
    let r = embed(
        token.clone(),
        json!({"model": "bert-mean", "input": want.cases[0].prompt, "encoding_format": "base64", "dimensions": 8, "user": "u-1"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let v: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect();
    let full = &want.cases[0].embedding[..8];
    let norm = full.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert_eq!(v.len(), 8);
    for (g, w) in v.iter().zip(full) {
        assert!((g - w / norm).abs() < 1e-4, "{g} vs {}", w / norm);
    }

    // OIP v2 and v1 answer the same vectors.
    let r = stack
        .post_to(
            "/v2/models/bert-mean/infer",
            Some(&token),
            &headers,
            json!({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [want.cases[1].prompt]}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["outputs"][0]["name"], "embedding");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 16]));
    assert!(close(&body["outputs"][0]["data"], &want.cases[1].embedding));
    let r = stack
        .post(
            Some(&token),
            &json!({"model_name": "bert-mean", "prompt": want.cases[1].prompt}).to_string(),
        )
        .await;
    assert!(close(&json(r).await["values"], &want.cases[1].embedding));
    let model = json(stack.get("/v1/models/bert-mean", Some(&token)).await).await;
    assert_eq!(
        (model["task"].as_str(), model["dimension"].as_u64()),
        (Some("embedding"), Some(16))
    );

    // A long text is cut and says so, or refused when asked.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let r = embed(
        token.clone(),
        json!({"model": "bert-mean", "input": ["hello", long]}),
    )
    .await;
    let body = json(r).await;
    assert_eq!(body["data"][1]["truncated"], true);
    let r = embed(
        token.clone(),
        json!({"model": "bert-mean", "input": ["hello", long], "truncate": false}),
    )
    .await;
    let problem = assert_problem(r, 400).await;
    assert_eq!(problem["error"]["param"], "input[1]", "{problem}");

    // Refusals: the status OpenAI's client maps to its exceptions, and its error object.
    let calls = stack.worker_calls().await;
    for (token, body, status, kind, param) in [
        (
            token.clone(),
            json!({"model": "nope", "input": "a"}),
            404,
            "not_found_error",
            json!("model"),
        ),
        (
            token.clone(),
            json!({"model": "bert-onnx", "input": "a"}),
            400,
            "invalid_request_error",
            json!("model"),
        ),
        (
            token.clone(),
            json!({"model": "bert-mean", "input": [1, 2, 3]}),
            400,
            "invalid_request_error",
            json!("input"),
        ),
        (
            token.clone(),
            json!({"model": "bert-mean", "input": "a", "dimensions": 17}),
            400,
            "invalid_request_error",
            json!("dimensions"),
        ),
        (
            stack.keys.token("alice", "predict model:bert-cls"),
            json!({"model": "bert-mean", "input": "a"}),
            403,
            "permission_error",
            json!(null),
        ),
        (
            "not-a-token".to_string(),
            json!({"model": "bert-mean", "input": "a"}),
            401,
            "authentication_error",
            json!(null),
        ),
    ] {
        let r = embed(token, body.clone()).await;
        let problem = assert_problem(r, status).await;
        assert_eq!(problem["error"]["type"], kind, "{body}: {problem}");
        assert_eq!(problem["error"]["param"], param, "{body}: {problem}");
        assert_eq!(problem["error"]["message"], problem["detail"]);
    }
    assert_eq!(
        stack.worker_calls().await,
        calls,
        "no worker call for a refusal"
    );
}

/// A repository serving model `forest` in two versions (the XGBoost export as 1, LightGBM's
/// as 2, both on the same 30 features), with `routing` as its `routing.json` when given.
fn two_versions(fixtures: &std::path::Path, routing: Option<&str>) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let forest = repo.path().join("forest");
    std::fs::create_dir(&forest).unwrap();
    std::os::unix::fs::symlink(fixtures.join("xgboost-binary"), forest.join("1")).unwrap();
    std::os::unix::fs::symlink(fixtures.join("lightgbm-binary"), forest.join("2")).unwrap();
    std::fs::write(
        forest.join("model.json"),
        r#"{"version_policy":{"all":{}}}"#,
    )
    .unwrap();
    if let Some(routing) = routing {
        std::fs::write(forest.join("routing.json"), routing).unwrap();
    }
    repo
}

/// A model served in two versions: v1 `model_version` and OIP's `/versions/{v}` pick one,
/// requests without get the default (latest), every answer names its version, and the
/// catalogue lists the model once with its versions.
#[tokio::test]
async fn requests_pick_a_version_and_answers_name_it() {
    let fixtures = common::root().join("gpu-worker/tests/fixtures/onnx");
    let repo = two_versions(&fixtures, None);
    let stack = Stack::start(Options {
        model_dir: Some(repo.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("alice", "predict");
    let read = |name: &str| -> Expected {
        serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(name).join("expected.json")).unwrap(),
        )
        .unwrap()
    };
    let (xgboost, lightgbm) = (read("xgboost-binary"), read("lightgbm-binary"));
    let row = &xgboost.inputs[0];
    for (version, want, named) in [
        (Some("1"), &xgboost, "1"),
        (Some("2"), &lightgbm, "2"),
        (None, &lightgbm, "2"),
    ] {
        let mut body = json!({"model_name": "forest", "features": row});
        if let Some(v) = version {
            body["model_version"] = json!(v);
        }
        let r = stack.post(Some(&token), &body.to_string()).await;
        assert_eq!(r.status(), 200);
        let got = json(r).await;
        assert_eq!(got["model_version"], named);
        let best = want.probabilities[0]
            .iter()
            .copied()
            .fold(f64::MIN, f64::max);
        assert!(
            (got["probability"].as_f64().unwrap() - best).abs() < 1e-5,
            "{version:?}"
        );
    }
    let r = stack
        .post_to(
            "/v2/models/forest/versions/1/infer",
            Some(&token),
            &[("content-type", "application/json".to_string())],
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": row}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    let body = json(r).await;
    assert_eq!(body["model_version"], "1", "{body}");
    let r = stack
        .post(
            Some(&token),
            &json!({"model_name": "forest", "model_version": "7", "features": row}).to_string(),
        )
        .await;
    let problem = assert_problem(r, 404).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("it serves 1, 2"),
        "{problem}"
    );
    let list = json(stack.get("/v1/models", Some(&token)).await).await;
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(
        (models[0]["version"].as_str(), models[0]["versions"].clone()),
        (Some("2"), json!(["1", "2"]))
    );
    let metadata = json(stack.get("/v2/models/forest", Some(&token)).await).await;
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    let r = stack
        .get("/v2/models/forest/versions/3", Some(&token))
        .await;
    assert_problem(r, 404).await;
}

/// A canary split (`routing.json`, 90/10) sends each caller to one version, in proportion,
/// and every answer names the version that computed it.
#[tokio::test]
async fn a_canary_split_is_sticky_per_caller_and_in_proportion() {
    let fixtures = common::root().join("gpu-worker/tests/fixtures/onnx");
    let repo = two_versions(&fixtures, Some(r#"{"weights":{"1":90,"2":10}}"#));
    let stack = Stack::start(Options {
        model_dir: Some(repo.path().to_path_buf()),
        limit: 10_000,
        ..Options::default()
    })
    .await;
    let row: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("xgboost-binary").join("expected.json")).unwrap(),
    )
    .unwrap();
    let body = json!({"model_name": "forest", "features": row.inputs[0]}).to_string();
    let callers = 400;
    let mut on_2 = 0;
    for i in 0..callers {
        let token = stack.keys.token(&format!("caller-{i}"), "predict");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let r = stack.post(Some(&token), &body).await;
            assert_eq!(r.status(), 200);
            seen.push(json(r).await["model_version"].as_str().unwrap().to_string());
        }
        assert_eq!(seen[0], seen[1], "caller-{i} saw two versions");
        on_2 += usize::from(seen[0] == "2");
    }
    let share = on_2 as f64 * 100.0 / callers as f64;
    // 400 callers: one standard deviation of a 10% share is 1.5 points.
    assert!((share - 10.0).abs() <= 5.0, "{share:.1}% on version 2");
}

#[tokio::test]
async fn a_caller_with_a_huge_sub_is_still_counted_with_fail_open_on() {
    // A sub of a few kilobytes once pushed the table key past the 2,048-byte key limit: every
    // write failed and fail-open turned the limit off for that caller. The key is now a
    // digest of the sub, and only timeouts and transport failures fail open.
    let stack = Stack::start(Options {
        limit: 2,
        fail_open: true,
        ..Options::default()
    })
    .await;
    let token = stack.keys.token(&"s".repeat(4000), "predict");
    let body = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let statuses = [
        stack.post(Some(&token), body).await.status(),
        stack.post(Some(&token), body).await.status(),
        stack.post(Some(&token), body).await.status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429]);
}

#[tokio::test]
async fn a_batch_costs_its_inputs_against_the_limit() {
    // One caller must not queue 32 inputs for the price of one request.
    let stack = Stack::start(Options {
        limit: 5,
        ..Options::default()
    })
    .await;
    let token = stack.keys.token("batcher", "predict");
    let batch = r#"{"model_name":"iris","inputs":[{"features":[5.1,3.5,1.4,0.2]},{"features":[7.0,3.2,4.7,1.4]},{"features":[6.3,3.3,6.0,2.5]}]}"#;
    let single = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let r = stack.post(Some(&token), batch).await;
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "ratelimit").contains(";r=2;"),
        "{}",
        header(&r, "ratelimit")
    );
    // Three more inputs would make 6 of 5: refused whole, nothing counted.
    let r = stack.post(Some(&token), batch).await;
    assert_problem(r, 429).await;
    let r = stack.post(Some(&token), single).await;
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "ratelimit").contains(";r=1;"),
        "{}",
        header(&r, "ratelimit")
    );
}

/// Two worker pools, each with its own CA and client identity, serving different models:
/// the gateway learns from each pool's catalogue which models it serves, each model's calls
/// reach only its pool, and one pool down leaves the other's models answering (its own
/// answer 503, and the API stays up).
#[tokio::test]
async fn each_model_reaches_only_its_pool_and_one_pool_down_leaves_the_other() {
    let demo = common::root().join("models").canonicalize().unwrap();
    let folder = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(demo.join(name), dir.path().join(name)).unwrap();
        dir
    };
    let (first, second) = (folder("iris"), folder("wine"));
    let mut stack = Stack::start(Options {
        model_dir: Some(first.path().to_path_buf()),
        second_pool: Some(second.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let token = stack.keys.token("pools", "predict");
    let listed = json(stack.get("/v1/models", Some(&token)).await).await;
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["iris", "wine"], "{listed}");

    let iris = r#"{"model_name":"iris","features":[5.1,3.5,1.4,0.2]}"#;
    let wine = r#"{"model_name":"wine","features":[13.32,3.24,2.38,21.5,92.0,1.93,0.76,0.45,1.25,8.42,0.55,1.62,650.0]}"#;
    async fn calls(stack: &Stack) -> (f64, f64) {
        (
            common::answered(stack.worker.as_ref().unwrap()).await,
            common::answered(stack.second.as_ref().unwrap()).await,
        )
    }
    let before = calls(&stack).await;
    for _ in 0..3 {
        assert_eq!(stack.post(Some(&token), iris).await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(stack.post(Some(&token), wine).await.status(), 200);
    }
    let after = calls(&stack).await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (3.0, 2.0));

    // The second pool goes away: iris answers, wine is 503 (not 404: it is still
    // catalogued), and the API's health stays up.
    stack.second.take().unwrap().stop().await.unwrap();
    assert_eq!(stack.post(Some(&token), iris).await.status(), 200);
    let r = stack.post(Some(&token), wine).await;
    assert_problem(r, 503).await;
    assert_eq!(stack.get("/healthz", None).await.status(), 200);
}
