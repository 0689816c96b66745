//! CloudWatch Embedded Metric Format: one JSON line per request on stdout, which Lambda
//! ships to CloudWatch Logs and CloudWatch turns into metrics (no API call, no latency).

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns EMF output on or off for this process (benchmarks turn it off to keep their
/// table readable; Lambda keeps it on).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Namespace of every metric.
pub const NAMESPACE: &str = "InferenceHub";

#[cfg(test)]
thread_local! {
    /// Tests: every metrics line this thread emitted, in order.
    pub static EMITTED: std::cell::RefCell<Vec<RequestMetrics>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// What one request did.
#[derive(Debug, Clone, Default)]
pub struct RequestMetrics {
    /// Function name (`predict`, `models`, `health`).
    pub function: &'static str,
    /// Model called, when known.
    pub model: Option<String>,
    /// The version of it that computed the answer (the catalogue's, after the canary split).
    pub version: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// Time spent in the function, in milliseconds.
    pub latency_ms: f64,
    /// Predictions returned (inputs answered).
    pub predictions: u32,
    /// Refused by the rate limiter.
    pub rate_limited: bool,
    /// Let through because the rate-limit store failed and fail-open is configured.
    pub fail_open: bool,
    /// Request id, as a property for log search.
    pub request_id: String,
}

impl RequestMetrics {
    /// The EMF document.
    pub fn to_emf(&self, timestamp_ms: u64) -> Value {
        let failed = u32::from(self.status >= 500);
        json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Function"], ["Function", "Model"], ["Function", "Model", "Version"]],
                    "Metrics": [
                        {"Name": "Requests", "Unit": "Count"},
                        {"Name": "Predictions", "Unit": "Count"},
                        {"Name": "Latency", "Unit": "Milliseconds"},
                        {"Name": "RateLimited", "Unit": "Count"},
                        {"Name": "Failed", "Unit": "Count"},
                        {"Name": "RateLimitFailOpen", "Unit": "Count"}
                    ]
                }]
            },
            "Function": self.function,
            "Model": self.model.as_deref().unwrap_or("none"),
            "Version": self.version.as_deref().unwrap_or("none"),
            "Requests": 1,
            "Predictions": self.predictions,
            "Latency": self.latency_ms,
            "RateLimited": u32::from(self.rate_limited),
            "Failed": failed,
            "RateLimitFailOpen": u32::from(self.fail_open),
            "Status": self.status,
            "request_id": self.request_id,
        })
    }

    /// Writes the EMF line to stdout.
    pub fn emit(&self) {
        #[cfg(test)]
        EMITTED.with(|e| e.borrow_mut().push(self.clone()));
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        println!("{}", self.to_emf(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_declares_every_metric_it_sets() {
        let m = RequestMetrics {
            function: "predict",
            model: Some("iris".into()),
            version: Some("2".into()),
            status: 429,
            latency_ms: 1.5,
            rate_limited: true,
            ..Default::default()
        };
        let doc = m.to_emf(1);
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = metric["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} declared but not set");
        }
        assert_eq!(doc["RateLimited"], 1);
        assert_eq!(doc["Failed"], 0);
        assert_eq!(doc["Model"], "iris");
        assert_eq!(doc["Version"], "2");
    }
}
