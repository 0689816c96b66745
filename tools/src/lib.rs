//! InferenceHub's development and build tooling, behind the `inferencehub-dev` binary:
//! training the demo models ([`training`]) and serving the gateway's functions locally
//! over plain HTTP ([`gateway`]), and the generated configuration reference
//! ([`reference`]). Development certificates, signing keys and local tables
//! come from `inferencehub-devkit`; measurements and load from `inferencehub-bench`.
//! Nothing here ships in a Lambda zip or a worker image; the whole-stack tests and the
//! gateway benchmark live here too, since they need both halves.

pub mod gateway;
pub mod reference;
pub mod training;
