//! The sample events in `functions/events/` stay valid: each goes through `lambda_http`'s
//! own API Gateway v2 event parsing and then the handler its route belongs to, exactly as
//! in Lambda, and must get the status the events README promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Options, Stack};
use inferencehub_functions::layers::serve;

#[tokio::test]
async fn sample_events_get_their_documented_status() {
    let stack = Stack::start(Options::default()).await;
    let token = stack.keys.token("events", "predict");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/events");
    let expected = [
        ("predict-sentiment.json", 200),
        ("predict-iris.json", 200),
        ("predict-batch.json", 200),
        ("predict-invalid.json", 400),
        ("models.json", 200),
        ("model-iris.json", 200),
        ("health.json", 200),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let status = expected
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not listed in events/README.md"))
            .1;
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("DEV_TOKEN", &token);
        let request = lambda_http::request::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not a valid API Gateway event: {e}"));
        let gw = &stack.gateway;
        // Each event goes to its function's handler directly, as Lambda would invoke it.
        let response = if name.starts_with("predict") {
            serve(&gw.predict, request).await
        } else if name.starts_with("model") {
            serve(&gw.models, request).await
        } else {
            serve(&gw.health, request).await
        };
        assert_eq!(
            response.status().as_u16(),
            status,
            "{name}: {:?}",
            response.body()
        );
        if name == "model-iris.json" {
            let lambda_http::Body::Text(body) = response.body() else {
                panic!("{name}")
            };
            assert!(body.contains("\"name\":\"iris\""), "{body}");
        }
        seen += 1;
    }
    assert_eq!(seen, expected.len());
}
