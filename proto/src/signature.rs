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

    /// Checks one input. `field` turns a field name of the input (`prompt`, `features`)
    /// into its path in the caller's request (`prompt`, `inputs[3].prompt`, `rows[3].features`),
    /// so single and batch inputs, gateway and worker, run this one check.
    pub fn check(
        &self,
        input: Input<'_>,
        field: impl Fn(&str) -> String,
    ) -> Result<(), FieldError> {
        match *self {
            Self::Text { max_prompt_bytes } => {
                if input.features.is_some() {
                    return Err(FieldError::new(
                        field("features"),
                        "this is a text model: send `prompt`, not `features`",
                    ));
                }
                check_prompt(
                    &field("prompt"),
                    input.prompt.unwrap_or(""),
                    max_prompt_bytes,
                )
            }
            Self::Tabular { feature_count } => {
                if input.prompt.is_some() {
                    return Err(FieldError::new(
                        field("prompt"),
                        "this is a tabular model: send `features`, not `prompt`",
                    ));
                }
                check_features(
                    &field("features"),
                    input.features.unwrap_or(&[]),
                    feature_count,
                )
            }
        }
    }

    /// Checks every input of a batch in order; `field(i, name)` gives the path of field
    /// `name` of input `i`. Returns every problem found (empty when all pass).
    pub fn check_all<'a>(
        &self,
        inputs: impl IntoIterator<Item = Input<'a>>,
        field: impl Fn(usize, &str) -> String,
    ) -> Vec<FieldError> {
        inputs
            .into_iter()
            .enumerate()
            .filter_map(|(i, input)| self.check(input, |name| field(i, name)).err())
            .collect()
    }
}

/// One input as the caller sent it: `None` where a field was absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Input<'a> {
    /// The text, if sent.
    pub prompt: Option<&'a str>,
    /// The features, if sent.
    pub features: Option<&'a [f32]>,
}

impl<'a> Input<'a> {
    /// From the proto's fields, where proto3 cannot tell empty from absent: an empty value
    /// counts as absent.
    pub fn from_proto(prompt: &'a str, features: &'a [f32]) -> Self {
        Self {
            prompt: (!prompt.is_empty()).then_some(prompt),
            features: (!features.is_empty()).then_some(features),
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

    fn check(sig: InputSignature, features: &[f32], prompt: &str) -> Result<(), FieldError> {
        sig.check(Input::from_proto(prompt, features), str::to_string)
    }

    #[test]
    fn text_inputs() {
        assert!(check(TEXT, &[], "hello").is_ok());
        assert_eq!(field_of(check(TEXT, &[], "")), "prompt");
        assert_eq!(field_of(check(TEXT, &[], "  \n")), "prompt");
        assert_eq!(field_of(check(TEXT, &[], &"x".repeat(17))), "prompt");
        assert_eq!(field_of(check(TEXT, &[1.0], "hello")), "features");
    }

    #[test]
    fn tabular_inputs() {
        assert!(check(TABULAR, &[1.0, -2.0], "").is_ok());
        assert_eq!(field_of(check(TABULAR, &[], "")), "features");
        assert_eq!(field_of(check(TABULAR, &[1.0], "")), "features");
        assert_eq!(
            field_of(check(TABULAR, &[1.0, f32::NAN], "")),
            "features[1]"
        );
        assert_eq!(
            field_of(check(TABULAR, &[f32::INFINITY, 0.0], "")),
            "features[0]"
        );
        assert_eq!(field_of(check(TABULAR, &[1.0, 2.0], "hi")), "prompt");
    }

    #[test]
    fn batches_name_each_element() {
        let rows: [&[f32]; 3] = [&[1.0, 2.0], &[1.0], &[f32::NAN, 0.0]];
        let errors = TABULAR.check_all(
            rows.iter().map(|r| Input {
                features: Some(r),
                ..Input::default()
            }),
            |i, f| format!("inputs[{i}].{f}"),
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["inputs[1].features", "inputs[2].features[0]"]);
        // Presence, not emptiness, decides what was sent: an empty prompt for a tabular
        // model is still a prompt.
        let sent = Input {
            prompt: Some(""),
            features: Some(&[1.0, 2.0]),
        };
        assert_eq!(field_of(TABULAR.check(sent, str::to_string)), "prompt");
    }
}
