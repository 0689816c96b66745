//! One table of error kinds: each maps to exactly one HTTP status and one gRPC code.
//! The worker builds every gRPC status from it ([`ErrorKind::status`], [`invalid_argument`]);
//! the gateway turns worker codes back into kinds with [`ErrorKind::from_grpc`] and reads
//! the fields at fault from the status details ([`field_errors`]), never from its text.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Every way a request can fail, as seen by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is malformed or does not match the model's signature.
    InvalidArgument,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The named model (or route) does not exist.
    NotFound,
    /// The route exists but not with this HTTP method.
    MethodNotAllowed,
    /// Missing, malformed or unverifiable credentials.
    Unauthenticated,
    /// Valid credentials without the needed scope.
    PermissionDenied,
    /// The caller exceeded its rate limit.
    RateLimited,
    /// The worker's queue is full; retry shortly.
    Overloaded,
    /// A dependency (worker, DynamoDB) cannot be reached.
    Unavailable,
    /// The request's deadline passed before an answer.
    DeadlineExceeded,
    /// The caller went away before an answer.
    Cancelled,
    /// The worker answered with something the gateway cannot use.
    BadGateway,
    /// A bug or an unexpected failure inside this component.
    Internal,
}

impl ErrorKind {
    /// The HTTP status a client sees.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Cancelled => 499,
            Self::Internal => 500,
            Self::BadGateway => 502,
            Self::Overloaded | Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
        }
    }

    /// The gRPC code a client of the worker sees.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument | Self::PayloadTooLarge => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::MethodNotAllowed => Code::Unimplemented,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::RateLimited | Self::Overloaded => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Cancelled => Code::Cancelled,
            Self::BadGateway | Self::Internal => Code::Internal,
        }
    }

    /// A gRPC status of this kind. Invalid inputs use [`invalid_argument`] instead, which
    /// also names the fields.
    pub fn status(self, message: impl Into<String>) -> Status {
        Status::new(self.grpc_code(), message)
    }

    /// How the gateway classifies a gRPC code returned by a worker.
    pub fn from_grpc(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument,
            Code::NotFound => Self::NotFound,
            Code::ResourceExhausted => Self::Overloaded,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded => Self::DeadlineExceeded,
            _ => Self::BadGateway,
        }
    }

    /// Short human title, used as the RFC 9457 `title`.
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidArgument => "Invalid request",
            Self::PayloadTooLarge => "Payload too large",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unauthenticated => "Unauthorized",
            Self::PermissionDenied => "Forbidden",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "Model overloaded",
            Self::Unavailable => "Service unavailable",
            Self::DeadlineExceeded => "Gateway timeout",
            Self::Cancelled => "Request cancelled",
            Self::BadGateway => "Bad gateway",
            Self::Internal => "Internal error",
        }
    }

    /// Stable slug, used in the RFC 9457 `type` URI and as a metric label.
    pub fn slug(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid-argument",
            Self::PayloadTooLarge => "payload-too-large",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission-denied",
            Self::RateLimited => "rate-limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::Cancelled => "cancelled",
            Self::BadGateway => "bad-gateway",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// A problem with one named field of a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Path of the field in the request, e.g. `features[2]`, `inputs[0].shape` or
    /// `prompts[0]`.
    pub field: String,
    /// What is wrong with it, in words a caller can act on.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The gRPC status the worker answers with: INVALID_ARGUMENT naming the field.
    pub fn to_status(&self) -> Status {
        invalid_argument(std::slice::from_ref(self))
    }

    /// One line for all of `errors`: the error itself when there is one, else a count.
    pub fn summary(errors: &[FieldError]) -> String {
        match errors {
            [one] => one.to_string(),
            many => format!("{} fields are invalid", many.len()),
        }
    }
}

/// INVALID_ARGUMENT carrying every field at fault as `google.rpc.BadRequest` field
/// violations in the status details (the standard rich error model), so clients read the
/// fields from structure instead of splitting the message.
pub fn invalid_argument(errors: &[FieldError]) -> Status {
    let violations = errors
        .iter()
        .map(|e| FieldViolation::new(e.field.clone(), e.message.clone()))
        .collect::<Vec<_>>();
    Status::with_error_details(
        ErrorKind::InvalidArgument.grpc_code(),
        FieldError::summary(errors),
        ErrorDetails::with_bad_request(violations),
    )
}

/// The `google.rpc.BadRequest` field violations a status carries; empty when it has none
/// (or its details cannot be decoded).
pub fn field_errors(status: &Status) -> Vec<FieldError> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| FieldError::new(v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_codes_round_trip_to_gateway_statuses() {
        assert_eq!(
            ErrorKind::from_grpc(Code::InvalidArgument).http_status(),
            400
        );
        assert_eq!(ErrorKind::from_grpc(Code::NotFound).http_status(), 404);
        assert_eq!(
            ErrorKind::from_grpc(Code::ResourceExhausted).http_status(),
            503
        );
        assert_eq!(ErrorKind::from_grpc(Code::Unavailable).http_status(), 503);
        assert_eq!(
            ErrorKind::from_grpc(Code::DeadlineExceeded).http_status(),
            504
        );
        assert_eq!(ErrorKind::from_grpc(Code::Internal).http_status(), 502);
        assert_eq!(ErrorKind::from_grpc(Code::Unknown).http_status(), 502);
    }

    #[test]
    fn field_errors_travel_as_bad_request_details() {
        let status = FieldError::new("features[1]", "must be finite").to_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "features[1]: must be finite");
        assert_eq!(
            field_errors(&status),
            [FieldError::new("features[1]", "must be finite")]
        );
        // Through the wire form (grpc-status-details-bin) and back.
        let mut header = http::HeaderMap::new();
        status.add_header(&mut header).unwrap();
        let decoded = Status::from_header_map(&header).unwrap();
        assert_eq!(
            field_errors(&decoded),
            [FieldError::new("features[1]", "must be finite")]
        );

        let two = invalid_argument(&[
            FieldError::new("prompt", "empty"),
            FieldError::new("features", "not for text"),
        ]);
        assert_eq!(two.message(), "2 fields are invalid");
        assert_eq!(field_errors(&two).len(), 2);
        // A status without details names no field, whatever its text says.
        let plain = Status::invalid_argument("features[1]: must be finite");
        assert!(field_errors(&plain).is_empty());
    }

    #[test]
    fn statuses_come_from_the_table() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Overloaded,
            ErrorKind::Internal,
        ] {
            assert_eq!(kind.status("x").code(), kind.grpc_code());
        }
    }
}
