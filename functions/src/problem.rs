//! RFC 9457 `application/problem+json` answers. Every 4xx/5xx the gateway sends is built
//! here from the shared [`ErrorKind`] table, so status, title and type never drift.
//! [`ProblemBody`] is both what is written and what the OpenAPI document describes.

use http::header::{HeaderName, HeaderValue};
use inferencehub_proto::signature::parse_batch_field;
use inferencehub_proto::{ErrorKind, FieldError, InputError};
use lambda_http::{Body, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::command::{Invalid, Place};
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
    /// Whether `error` is OpenAI's error object (the embeddings route) rather than text.
    pub openai: bool,
}

/// An RFC 9457 problem: the body of every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody<'a> {
    /// `urn:inferencehub:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed per kind.
    pub title: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: &'a str,
    /// The detail again, under the name Open Inference Protocol clients read
    /// (`tritonclient` shows `error`); on `POST /v1/embeddings` OpenAI's error object
    /// (`message`, `type`, `param`, `code`), which OpenAI's clients read. An RFC 9457
    /// extension member.
    pub error: ErrorMember<'a>,
    /// The fields at fault (validation problems only).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    pub errors: &'a [FieldError],
    /// This request's id (also in `X-Request-Id`).
    pub request_id: &'a str,
}

/// The `error` member of a problem: the detail as text, or (on `POST /v1/embeddings`)
/// OpenAI's error object.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorMember<'a> {
    /// The detail, as text.
    Text(&'a str),
    /// OpenAI's error object.
    OpenAi(OpenAiError<'a>),
}

/// OpenAI's error object: what its clients put in the exceptions they raise.
#[derive(Serialize, ToSchema)]
pub struct OpenAiError<'a> {
    /// The detail.
    pub message: &'a str,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault (the first field named), if any.
    pub param: Option<&'a str>,
    /// The problem's kind (`invalid-argument`, `not-found`, …).
    pub code: &'static str,
}

/// How a protocol names the places of its requests.
pub trait NamePlace {
    /// The protocol's name of `place`.
    fn name(&self, place: &Place) -> String;
}

/// A refused token as a client sees it: 401 with the RFC 6750 challenge.
impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Problem::unauthorized("a bearer token is required", false),
            AuthError::Invalid(why) => Problem::unauthorized(why, true),
            AuthError::KeysStale => {
                Problem::new(ErrorKind::Unavailable, e.to_string()).retry_after(5)
            }
        }
    }
}

impl Problem {
    /// A problem of `kind` with a detail message.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            headers: Vec::new(),
            openai: false,
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

    /// A 400 naming the places at fault in a protocol's terms.
    pub fn at(errors: Vec<Invalid>, names: &impl NamePlace) -> Self {
        Self::invalid(
            errors
                .into_iter()
                .map(|e| FieldError::new(names.name(&e.place), e.message))
                .collect(),
        )
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

    /// A 404 for a model the catalogue does not hold, naming where the request named it.
    pub fn no_model(name: &str, field: Option<String>) -> Self {
        let mut p = Self::new(ErrorKind::NotFound, format!("no model named {name:?}"));
        p.errors = field
            .map(|f| FieldError::new(f, "no such model (see GET /v1/models)"))
            .into_iter()
            .collect();
        p
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

    /// A worker failure as a client sees it: invalid inputs name, in the protocol's terms,
    /// the inputs the worker reported in its status details; an unknown model names the
    /// model; anything else is generic, with the worker's message in the log only.
    pub fn from_worker(e: &WorkerError, names: &impl NamePlace) -> Self {
        let kind = e.kind();
        match kind {
            ErrorKind::InvalidArgument => {
                let errors: Vec<Invalid> = e
                    .fields
                    .iter()
                    .filter_map(|f| {
                        let (index, field, element) = parse_batch_field(&f.field)?;
                        let error = InputError {
                            field,
                            element,
                            message: f.message.clone(),
                        };
                        Some(Invalid::new(Place::Input(index, error), f.message.clone()))
                    })
                    .collect();
                if errors.is_empty() {
                    tracing::warn!(error = %e.message, "worker refused the input without naming an input");
                    Self::new(kind, "the model refused the input")
                } else {
                    Self::at(errors, names)
                }
            }
            ErrorKind::NotFound => Self::no_model(
                "",
                Some(names.name(&Place::Model)).filter(|f| !f.is_empty()),
            )
            .with_detail("the model worker does not serve this model"),
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

    /// This problem with OpenAI's error object as its `error` member.
    pub fn openai(mut self) -> Self {
        self.openai = true;
        self
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The response, with the request id in the body.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = ProblemBody {
            kind: format!("urn:inferencehub:problem:{}", self.kind.slug()),
            title: self.kind.title(),
            status: self.kind.http_status(),
            detail: &self.detail,
            error: if self.openai {
                ErrorMember::OpenAi(OpenAiError {
                    message: &self.detail,
                    kind: match self.kind.http_status() {
                        401 => "authentication_error",
                        403 => "permission_error",
                        404 => "not_found_error",
                        429 => "rate_limit_error",
                        400..=499 => "invalid_request_error",
                        _ => "server_error",
                    },
                    param: self.errors.first().map(|e| e.field.as_str()),
                    code: self.kind.slug(),
                })
            } else {
                ErrorMember::Text(&self.detail)
            },
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
    fn the_embeddings_route_carries_openais_error_object() {
        let response = Problem::invalid(vec![FieldError::new("dimensions", "too large")])
            .openai()
            .into_response("r");
        let Body::Text(text) = response.body() else {
            panic!("text body")
        };
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "dimensions");
        assert_eq!(v["error"]["message"], v["detail"]);
        assert_eq!(v["error"]["code"], "invalid-argument");
        let denied = Problem::forbidden("no", "model:x")
            .openai()
            .into_response("r");
        let Body::Text(text) = denied.body() else {
            panic!("text body")
        };
        assert!(text.contains(r#""type":"permission_error""#), "{text}");
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

    struct Plain;
    impl NamePlace for Plain {
        fn name(&self, place: &Place) -> String {
            match place {
                Place::Input(i, e) => format!("in{i}.{}", e.path()),
                Place::Model => "model".into(),
                other => format!("{other:?}"),
            }
        }
    }

    #[test]
    fn worker_field_errors_are_named_by_the_protocol() {
        let status = inferencehub_proto::invalid_argument(&[
            FieldError::new("rows[2].features[1]", "must be finite"),
            FieldError::new("prompts[0]", "empty"),
        ]);
        let p = Problem::from_worker(&WorkerError::from_status(&status), &Plain);
        let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["in2.features[1]", "in0.prompt"]);
        let missing = WorkerError::new(tonic::Code::NotFound, "no model");
        let p = Problem::from_worker(&missing, &Plain);
        assert_eq!((p.status(), p.errors[0].field.as_str()), (404, "model"));
        // A refusal that names no input of ours names nothing.
        let odd = inferencehub_proto::invalid_argument(&[FieldError::new("weird", "x")]);
        let p = Problem::from_worker(&WorkerError::from_status(&odd), &Plain);
        assert!(p.errors.is_empty() && p.status() == 400);
    }
}
