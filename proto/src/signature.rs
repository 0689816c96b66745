//! A model's input signature and the checks every input must pass before it is queued.
//! The worker runs them on every call; the gateway runs the same code against the
//! catalogue it gets from `ListModels`, so invalid inputs never cross the network.

use crate::error::FieldError;
use crate::pb::{ModelInfo, ModelKind};

/// What one model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSignature {
    /// Takes a non-empty `prompt` of at most `max_prompt_bytes` bytes.
    Text {
        /// Largest prompt accepted, in bytes of UTF-8.
        max_prompt_bytes: usize,
    },
    /// Takes exactly `feature_count` finite `features`.
    Tabular {
        /// Number of features every input must have.
        feature_count: usize,
    },
}

impl InputSignature {
    /// The signature a `ListModels` entry advertises, if its kind is known.
    pub fn from_info(info: &ModelInfo) -> Option<Self> {
        match info.kind() {
            ModelKind::Text => Some(Self::Text {
                max_prompt_bytes: info.max_prompt_bytes as usize,
            }),
            ModelKind::Tabular => Some(Self::Tabular {
                feature_count: info.feature_count as usize,
            }),
            ModelKind::Unspecified => None,
        }
    }

    /// Checks one input given as the proto's `features` and `prompt` fields.
    pub fn check(&self, features: &[f32], prompt: &str) -> Result<(), FieldError> {
        match *self {
            Self::Text { max_prompt_bytes } => {
                if !features.is_empty() {
                    return Err(FieldError::new(
                        "features",
                        "this is a text model: send `prompt`, not `features`",
                    ));
                }
                check_prompt("prompt", prompt, max_prompt_bytes)
            }
            Self::Tabular { feature_count } => {
                if !prompt.is_empty() {
                    return Err(FieldError::new(
                        "prompt",
                        "this is a tabular model: send `features`, not `prompt`",
                    ));
                }
                check_features("features", features, feature_count)
            }
        }
    }
}

/// A prompt must be non-empty, not only whitespace, and at most `max_bytes` long.
pub fn check_prompt(field: &str, prompt: &str, max_bytes: usize) -> Result<(), FieldError> {
    if prompt.trim().is_empty() {
        return Err(FieldError::new(
            field,
            "must be a non-empty text for a text model",
        ));
    }
    if prompt.len() > max_bytes {
        return Err(FieldError::new(
            field,
            format!(
                "is {} bytes long; the limit is {max_bytes} bytes",
                prompt.len()
            ),
        ));
    }
    Ok(())
}

/// Features must number exactly `expected` and all be finite.
pub fn check_features(field: &str, features: &[f32], expected: usize) -> Result<(), FieldError> {
    if features.len() != expected {
        let message = if features.is_empty() {
            format!("is required: this tabular model takes {expected} features")
        } else {
            format!("expected {expected} values, got {}", features.len())
        };
        return Err(FieldError::new(field, message));
    }
    if let Some((i, v)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(FieldError::new(
            format!("{field}[{i}]"),
            format!("must be a finite number, got {v}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: InputSignature = InputSignature::Text {
        max_prompt_bytes: 16,
    };
    const TABULAR: InputSignature = InputSignature::Tabular { feature_count: 2 };

    fn field_of(r: Result<(), FieldError>) -> String {
        r.expect_err("should be rejected").field
    }

    #[test]
    fn text_inputs() {
        assert!(TEXT.check(&[], "hello").is_ok());
        assert_eq!(field_of(TEXT.check(&[], "")), "prompt");
        assert_eq!(field_of(TEXT.check(&[], "  \n")), "prompt");
        assert_eq!(field_of(TEXT.check(&[], &"x".repeat(17))), "prompt");
        assert_eq!(field_of(TEXT.check(&[1.0], "hello")), "features");
    }

    #[test]
    fn tabular_inputs() {
        assert!(TABULAR.check(&[1.0, -2.0], "").is_ok());
        assert_eq!(field_of(TABULAR.check(&[], "")), "features");
        assert_eq!(field_of(TABULAR.check(&[1.0], "")), "features");
        assert_eq!(field_of(TABULAR.check(&[1.0, f32::NAN], "")), "features[1]");
        assert_eq!(
            field_of(TABULAR.check(&[f32::INFINITY, 0.0], "")),
            "features[0]"
        );
        assert_eq!(field_of(TABULAR.check(&[1.0, 2.0], "hi")), "prompt");
    }
}
