//! A model's input signature and the checks every input must pass before it is queued.
//! The worker runs them on every call; the gateway runs the same code against the
//! catalogue it gets from `ListModels`, so invalid inputs never cross the network.
//!
//! A problem with an input is structured ([`InputError`]: which field, which element of
//! it), never a path string: each side names it in its own terms. The worker's names are
//! the batch RPC's fields (`prompts[3]`, `rows[3].features[2]`), written by [`batch_field`]
//! and read back by the gateway with [`parse_batch_field`], the two side by side here.

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

/// The field of one input a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputField {
    /// The text of a text model's input.
    Prompt,
    /// The features of a tabular model's input.
    Features,
}

impl InputField {
    /// The field's name in an input (`prompt`, `features`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::Features => "features",
        }
    }
}

/// A problem with one input: the field, the element inside it (a feature's index) when
/// the problem is that element's alone, and what is wrong in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The field at fault.
    pub field: InputField,
    /// The element of the field at fault, if one.
    pub element: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl InputError {
    /// A problem with the whole of `field`.
    pub fn new(field: InputField, message: impl Into<String>) -> Self {
        Self {
            field,
            element: None,
            message: message.into(),
        }
    }

    /// A problem with element `element` of `field`.
    pub fn at(field: InputField, element: usize, message: impl Into<String>) -> Self {
        Self {
            field,
            element: Some(element),
            message: message.into(),
        }
    }

    /// The field's path inside the input: `prompt`, `features`, `features[2]`.
    pub fn path(&self) -> String {
        match self.element {
            Some(i) => format!("{}[{i}]", self.field.name()),
            None => self.field.name().to_string(),
        }
    }
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

    /// The field an input of this model holds.
    pub fn field(&self) -> InputField {
        match self {
            Self::Text { .. } => InputField::Prompt,
            Self::Tabular { .. } => InputField::Features,
        }
    }

    /// Checks one input.
    pub fn check(&self, input: Input<'_>) -> Result<(), InputError> {
        match *self {
            Self::Text { max_prompt_bytes } => {
                if input.features.is_some() {
                    return Err(InputError::new(
                        InputField::Features,
                        "this is a text model: send `prompt`, not `features`",
                    ));
                }
                check_prompt(input.prompt.unwrap_or(""), max_prompt_bytes)
            }
            Self::Tabular { feature_count } => {
                if input.prompt.is_some() {
                    return Err(InputError::new(
                        InputField::Prompt,
                        "this is a tabular model: send `features`, not `prompt`",
                    ));
                }
                check_features(input.features.unwrap_or(&[]), feature_count)
            }
        }
    }

    /// Checks every input of a batch in order: each problem with the index of its input
    /// (empty when all pass).
    pub fn check_all<'a>(
        &self,
        inputs: impl IntoIterator<Item = Input<'a>>,
    ) -> Vec<(usize, InputError)> {
        inputs
            .into_iter()
            .enumerate()
            .filter_map(|(i, input)| self.check(input).err().map(|e| (i, e)))
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
pub fn check_prompt(prompt: &str, max_bytes: usize) -> Result<(), InputError> {
    if prompt.trim().is_empty() {
        return Err(InputError::new(
            InputField::Prompt,
            "must be a non-empty text for a text model",
        ));
    }
    if prompt.len() > max_bytes {
        return Err(InputError::new(
            InputField::Prompt,
            format!(
                "is {} bytes long; the limit is {max_bytes} bytes",
                prompt.len()
            ),
        ));
    }
    Ok(())
}

/// Features must number exactly `expected` and all be finite.
pub fn check_features(features: &[f32], expected: usize) -> Result<(), InputError> {
    if expected == 0 {
        return Err(InputError::new(
            InputField::Features,
            "this model takes named inputs (its signature's `inputs`): send each by name",
        ));
    }
    if features.len() != expected {
        let message = if features.is_empty() {
            format!("is required: this tabular model takes {expected} features")
        } else {
            format!("expected {expected} values, got {}", features.len())
        };
        return Err(InputError::new(InputField::Features, message));
    }
    if let Some((i, v)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(InputError::at(
            InputField::Features,
            i,
            format!("must be a finite number, got {v}"),
        ));
    }
    Ok(())
}

/// The batch RPC's field of `field`: `prompts` for texts, `rows` for features.
pub fn batch_list(field: InputField) -> &'static str {
    match field {
        InputField::Prompt => "prompts",
        InputField::Features => "rows",
    }
}

/// The name of a problem with input `index` of a `PredictBatch` call, in the RPC's own
/// fields: `prompts[3]`, `rows[3].features`, `rows[3].features[2]`.
pub fn batch_field(index: usize, e: &InputError) -> FieldError {
    let path = match e.field {
        InputField::Prompt => format!("prompts[{index}]"),
        InputField::Features => format!("rows[{index}].{}", e.path()),
    };
    FieldError::new(path, e.message.clone())
}

/// Reads a name [`batch_field`] wrote back into the input's index and its problem's
/// place; `None` for any other name.
pub fn parse_batch_field(field: &str) -> Option<(usize, InputField, Option<usize>)> {
    let index = |rest: &str| -> Option<(usize, String)> {
        let (i, tail) = rest.split_once(']')?;
        Some((i.parse().ok()?, tail.to_string()))
    };
    if let Some((i, tail)) = field.strip_prefix("prompts[").and_then(index) {
        return tail.is_empty().then_some((i, InputField::Prompt, None));
    }
    let (i, tail) = field.strip_prefix("rows[").and_then(index)?;
    match tail.strip_prefix(".features")? {
        "" => Some((i, InputField::Features, None)),
        element => {
            let j = element.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?;
            Some((i, InputField::Features, Some(j)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: InputSignature = InputSignature::Text {
        max_prompt_bytes: 16,
    };
    const TABULAR: InputSignature = InputSignature::Tabular { feature_count: 2 };

    fn path_of(r: Result<(), InputError>) -> String {
        r.expect_err("should be rejected").path()
    }

    fn check(sig: InputSignature, features: &[f32], prompt: &str) -> Result<(), InputError> {
        sig.check(Input::from_proto(prompt, features))
    }

    #[test]
    fn text_inputs() {
        assert!(check(TEXT, &[], "hello").is_ok());
        assert_eq!(path_of(check(TEXT, &[], "")), "prompt");
        assert_eq!(path_of(check(TEXT, &[], "  \n")), "prompt");
        assert_eq!(path_of(check(TEXT, &[], &"x".repeat(17))), "prompt");
        assert_eq!(path_of(check(TEXT, &[1.0], "hello")), "features");
    }

    #[test]
    fn tabular_inputs() {
        assert!(check(TABULAR, &[1.0, -2.0], "").is_ok());
        assert_eq!(path_of(check(TABULAR, &[], "")), "features");
        assert_eq!(path_of(check(TABULAR, &[1.0], "")), "features");
        assert_eq!(path_of(check(TABULAR, &[1.0, f32::NAN], "")), "features[1]");
        assert_eq!(
            path_of(check(TABULAR, &[f32::INFINITY, 0.0], "")),
            "features[0]"
        );
        assert_eq!(path_of(check(TABULAR, &[1.0, 2.0], "hi")), "prompt");
    }

    #[test]
    fn batches_name_each_element() {
        let rows: [&[f32]; 3] = [&[1.0, 2.0], &[1.0], &[f32::NAN, 0.0]];
        let errors = TABULAR.check_all(rows.iter().map(|r| Input {
            features: Some(r),
            ..Input::default()
        }));
        let fields: Vec<String> = errors
            .iter()
            .map(|(i, e)| batch_field(*i, e).field)
            .collect();
        assert_eq!(fields, ["rows[1].features", "rows[2].features[0]"]);
        // Presence, not emptiness, decides what was sent: an empty prompt for a tabular
        // model is still a prompt.
        let sent = Input {
            prompt: Some(""),
            features: Some(&[1.0, 2.0]),
        };
        assert_eq!(path_of(TABULAR.check(sent)), "prompt");
    }

    #[test]
    fn the_batch_names_read_back_into_places() {
        for (i, e) in [
            (3, InputError::new(InputField::Prompt, "x")),
            (0, InputError::new(InputField::Features, "x")),
            (12, InputError::at(InputField::Features, 7, "x")),
        ] {
            let named = batch_field(i, &e);
            assert_eq!(
                parse_batch_field(&named.field),
                Some((i, e.field, e.element)),
                "{}",
                named.field
            );
        }
        for other in [
            "prompts",
            "rows",
            "prompts[x]",
            "prompts[1].y",
            "rows[1]",
            "rows[1].features[",
            "rows[1].featuresx",
            "model_name",
        ] {
            assert_eq!(parse_batch_field(other), None, "{other}");
        }
    }
}
