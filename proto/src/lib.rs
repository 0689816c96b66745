//! The InferenceHub contract, shared by the gateway functions and the worker: generated
//! gRPC code for `inferencehub.v1` ([`pb`]), the input signature check both sides run on
//! single and batch inputs alike ([`signature`]), the one error taxonomy that maps every
//! failure to an HTTP status and a gRPC code and carries field violations as
//! `google.rpc.BadRequest` details ([`error`]), and the configuration conventions both
//! sides follow ([`settings`]).

pub mod error;
pub mod settings;
pub mod signature;
pub mod tensor;

/// Generated prost messages and tonic client/server for `proto/inference.proto`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod pb {
    tonic::include_proto!("inferencehub.v1");
}

pub use error::{ErrorKind, FieldError, field_errors, invalid_argument};
pub use signature::{Input, InputError, InputField, InputSignature};
pub use tensor::{DataType, TensorError};

/// Metadata key that carries the request id between gateway and worker.
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// Whether a caller-supplied request id is safe to echo in headers and logs: 1 to 128
/// characters of `A-Z a-z 0-9 - _ . :`. Others are replaced by a generated id.
pub fn is_sane_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
