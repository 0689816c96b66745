//! RFC 9457 `application/problem+json` answers. Every 4xx/5xx the gateway sends is built
//! here from the shared [`ErrorKind`] table, so status, title and type never drift.

use http::header::{HeaderName, HeaderValue};
use inferencehub_proto::{ErrorKind, FieldError};
use lambda_http::{Body, Response};
use serde::Serialize;

use crate::request::api_field;
use crate::worker::WorkerError;

/// One problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human explanation for this occurrence (never internal details).
    pub detail: String,
    /// The fields at fault, for validation problems.
    pub errors: Vec<FieldError>,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, ...).
    pub headers: Vec<(HeaderName, String)>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    /// The detail again under the name Open Inference Protocol clients read
    /// (`tritonclient` shows `error`); an RFC 9457 extension member.
    error: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
    request_id: &'a str,
}

impl Problem {
    /// A problem of `kind` with a detail message.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// A 400 naming the fields at fault.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = FieldError::summary(&errors);
        Self {
            errors,
            ..Self::new(ErrorKind::InvalidArgument, detail)
        }
    }

    /// A 401 with the RFC 6750 challenge.
    pub fn unauthorized(detail: impl Into<String>, token_present: bool) -> Self {
        let detail = detail.into();
        let challenge = if token_present {
            format!(
                "Bearer realm=\"inferencehub\", error=\"invalid_token\", error_description=\"{}\"",
                detail.replace('"', "'")
            )
        } else {
            "Bearer realm=\"inferencehub\"".to_string()
        };
        Self::new(ErrorKind::Unauthenticated, detail)
            .with_header(http::header::WWW_AUTHENTICATE, challenge)
    }

    /// A 403 with the RFC 6750 `insufficient_scope` challenge.
    pub fn forbidden(detail: impl Into<String>, scope: &str) -> Self {
        Self::new(ErrorKind::PermissionDenied, detail).with_header(
            http::header::WWW_AUTHENTICATE,
            format!(
                "Bearer realm=\"inferencehub\", error=\"insufficient_scope\", scope=\"{scope}\""
            ),
        )
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds `Retry-After` in seconds.
    pub fn retry_after(self, seconds: u64) -> Self {
        self.with_header(http::header::RETRY_AFTER, seconds.max(1).to_string())
    }

    /// A worker failure as a client sees it: invalid inputs name the fields the worker
    /// reported in its status details (in the API's terms), an unknown model names
    /// `model_name`; anything else is generic, with the worker's message in the log only.
    pub fn from_worker(e: &WorkerError) -> Self {
        let kind = e.kind();
        match kind {
            ErrorKind::InvalidArgument => {
                let errors: Vec<FieldError> = e
                    .fields
                    .iter()
                    .map(|f| FieldError::new(api_field(&f.field), f.message.clone()))
                    .collect();
                if errors.is_empty() {
                    tracing::warn!(error = %e.message, "worker refused the input without naming a field");
                    Self::new(kind, "the model refused the input")
                } else {
                    Self::invalid(errors)
                }
            }
            ErrorKind::NotFound => {
                let mut p = Self::new(kind, "the model worker does not serve this model");
                p.errors = vec![FieldError::new(
                    "model_name",
                    "no such model (see GET /v1/models)",
                )];
                p
            }
            _ => {
                tracing::error!(code = ?e.code, error = %e.message, "worker call failed");
                let detail = match kind {
                    ErrorKind::Overloaded => "the model is busy; retry shortly",
                    ErrorKind::Unavailable => "no model worker is available right now",
                    ErrorKind::DeadlineExceeded => "the model worker did not answer in time",
                    _ => "the model worker failed to answer",
                };
                let p = Self::new(kind, detail);
                if kind.http_status() == 503 {
                    p.retry_after(1)
                } else {
                    p
                }
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The response, with the request id in the body.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = ProblemBody {
            type_: format!("urn:inferencehub:problem:{}", self.kind.slug()),
            title: self.kind.title(),
            status: self.kind.http_status(),
            detail: &self.detail,
            error: &self.detail,
            errors: &self.errors,
            request_id,
        };
        let json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
        let mut response = Response::new(Body::Text(json));
        *response.status_mut() =
            http::StatusCode::from_u16(self.kind.http_status()).unwrap_or_default();
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc_9457_with_field_errors() {
        let response = Problem::invalid(vec![FieldError::new("features[1]", "must be finite")])
            .into_response("req-1");
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let Body::Text(text) = response.body() else {
            panic!("text body")
        };
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["title"], "Invalid request");
        assert_eq!(v["type"], "urn:inferencehub:problem:invalid-argument");
        assert_eq!(v["errors"][0]["field"], "features[1]");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["error"], v["detail"]);
    }

    #[test]
    fn unauthorized_carries_the_bearer_challenge() {
        let r = Problem::unauthorized("token expired", true).into_response("r");
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        let r = Problem::new(ErrorKind::RateLimited, "slow down")
            .retry_after(7)
            .into_response("r");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
    }
}
