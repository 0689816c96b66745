//! The JSON body of `POST /v1/predict`, its parsing (with field paths in errors) and its
//! validation against the model's signature. Nothing invalid leaves this module.
//!
//! Single: `{"model_name": "...", "prompt": "..."}` or `{"model_name": "...", "features": [..]}`.
//! Batch:  `{"model_name": "...", "inputs": [{"prompt": "..."}, ...]}` (or `features` items).

use inferencehub_proto::pb::{FeatureRow, ModelInfo, PredictBatchRequest, PredictRequest};
use inferencehub_proto::signature::{check_features, check_prompt};
use inferencehub_proto::{FieldError, InputSignature};
use serde::Deserialize;

/// A predict body as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    /// Model to call.
    pub model_name: String,
    /// Text input.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Tabular input.
    #[serde(default)]
    pub features: Option<Vec<f64>>,
    /// Batch form.
    #[serde(default)]
    pub inputs: Option<Vec<InputBody>>,
}

/// One element of `inputs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputBody {
    /// Text input.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Tabular input.
    #[serde(default)]
    pub features: Option<Vec<f64>>,
}

/// A validated request, ready for the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Validated {
    /// One input.
    Single(PredictRequest),
    /// Several inputs.
    Batch(PredictBatchRequest),
}

/// Parses the body, naming the field at fault.
pub fn parse(body: &[u8]) -> Result<PredictBody, FieldError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FieldError::new("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<PredictBody, _> = serde_path_to_error::deserialize(&mut de);
    if parsed.is_ok() && de.end().is_err() {
        return Err(FieldError::new(
            "body",
            "is not valid JSON: trailing characters after the object",
        ));
    }
    parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string();
        if inner.is_syntax() || inner.is_eof() {
            return FieldError::new("body", format!("is not valid JSON: {message}"));
        }
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            // The path already ends with the unknown field's name.
            let field = if path == "." || path.is_empty() {
                name.to_string()
            } else {
                path
            };
            return FieldError::new(field, "is not a known field");
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return FieldError::new(name, "is required");
        }
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        FieldError::new(field, message)
    })
}

/// Features as f32, each finite after narrowing.
fn narrow(field: &str, values: &[f64], errors: &mut Vec<FieldError>) -> Vec<f32> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let narrowed = v as f32;
            if !narrowed.is_finite() {
                errors.push(FieldError::new(
                    format!("{field}[{i}]"),
                    "must be a finite number within the 32-bit float range",
                ));
            }
            narrowed
        })
        .collect()
}

/// Checks one input (prompt or features) against the signature; errors are prefixed.
fn check_one(
    prefix: &str,
    signature: InputSignature,
    prompt: Option<String>,
    features: Option<Vec<f64>>,
    errors: &mut Vec<FieldError>,
) -> (String, Vec<f32>) {
    let field = |name: &str| format!("{prefix}{name}");
    match signature {
        InputSignature::Text { max_prompt_bytes } => {
            if features.is_some() {
                errors.push(FieldError::new(
                    field("features"),
                    "this is a text model: send `prompt`",
                ));
            }
            let prompt = prompt.unwrap_or_default();
            if let Err(e) = check_prompt(&field("prompt"), &prompt, max_prompt_bytes) {
                errors.push(e);
            }
            (prompt, Vec::new())
        }
        InputSignature::Tabular { feature_count } => {
            if prompt.is_some() {
                errors.push(FieldError::new(
                    field("prompt"),
                    "this is a tabular model: send `features`",
                ));
            }
            let name = field("features");
            let before = errors.len();
            let features = narrow(&name, &features.unwrap_or_default(), errors);
            if errors.len() == before
                && let Err(e) = check_features(&name, &features, feature_count)
            {
                errors.push(e);
            }
            (String::new(), features)
        }
    }
}

/// Validates a parsed body against `model`. `max_prompt_bytes` is the gateway's own cap
/// (the worker's advertised cap applies too); `max_inputs` bounds the batch form.
pub fn validate(
    body: PredictBody,
    model: &ModelInfo,
    max_prompt_bytes: usize,
    max_inputs: usize,
) -> Result<Validated, Vec<FieldError>> {
    let mut signature = InputSignature::from_info(model).ok_or_else(|| {
        vec![FieldError::new(
            "model_name",
            "this model has no usable input signature",
        )]
    })?;
    if let InputSignature::Text {
        max_prompt_bytes: worker_cap,
    } = &mut signature
    {
        *worker_cap = match *worker_cap {
            0 => max_prompt_bytes,
            cap => cap.min(max_prompt_bytes),
        };
    }
    let mut errors = Vec::new();
    let validated = match body.inputs {
        Some(inputs) => {
            if body.prompt.is_some() || body.features.is_some() {
                errors.push(FieldError::new(
                    "inputs",
                    "send either `inputs` or a single `prompt`/`features`, not both",
                ));
            }
            if inputs.is_empty() {
                errors.push(FieldError::new("inputs", "needs at least one input"));
            }
            if inputs.len() > max_inputs {
                errors.push(FieldError::new(
                    "inputs",
                    format!(
                        "at most {max_inputs} inputs per request, got {}",
                        inputs.len()
                    ),
                ));
                return Err(errors);
            }
            let mut batch = PredictBatchRequest {
                model_name: body.model_name,
                ..Default::default()
            };
            for (i, input) in inputs.into_iter().enumerate() {
                let (prompt, features) = check_one(
                    &format!("inputs[{i}]."),
                    signature,
                    input.prompt,
                    input.features,
                    &mut errors,
                );
                match signature {
                    InputSignature::Text { .. } => batch.prompts.push(prompt),
                    InputSignature::Tabular { .. } => batch.rows.push(FeatureRow { features }),
                }
            }
            Validated::Batch(batch)
        }
        None => {
            let (prompt, features) =
                check_one("", signature, body.prompt, body.features, &mut errors);
            Validated::Single(PredictRequest {
                features,
                model_name: body.model_name,
                prompt,
                request_id: String::new(),
            })
        }
    };
    if errors.is_empty() {
        Ok(validated)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferencehub_proto::pb::ModelKind;

    fn iris() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 4,
            ..Default::default()
        }
    }

    fn sentiment() -> ModelInfo {
        ModelInfo {
            name: "sentiment".into(),
            kind: ModelKind::Text as i32,
            max_prompt_bytes: 1000,
            ..Default::default()
        }
    }

    fn fields(body: &str, model: &ModelInfo) -> Vec<String> {
        let parsed = match parse(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => return vec![e.field],
        };
        match validate(parsed, model, 100, 3) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        assert_eq!(fields("", &iris()), ["body"]);
        assert_eq!(fields("{", &iris()), ["body"]);
        assert_eq!(fields("[1]", &iris()), ["body"]);
        assert_eq!(fields(r#"{"features":[1,2,3,4]}"#, &iris()), ["model_name"]);
        assert_eq!(fields(r#"{"model_name":"iris","x":1}"#, &iris()), ["x"]);
        assert_eq!(fields(r#"{"model_name":7}"#, &iris()), ["model_name"]);
        assert_eq!(
            fields(r#"{"model_name":"iris","features":[1,"a"]}"#, &iris()),
            ["features[1]"]
        );
        assert_eq!(
            fields(r#"{"model_name":"iris","features":[1,2,3,4]} x"#, &iris()),
            ["body"]
        );
        assert_eq!(
            fields(
                r#"{"model_name":"iris","inputs":[{"features":[1,2,3,4],"y":1}]}"#,
                &iris()
            ),
            ["inputs[0].y"]
        );
    }

    #[test]
    fn validation_matches_the_signature() {
        assert!(fields(r#"{"model_name":"iris","features":[1,2,3,4]}"#, &iris()).is_empty());
        assert_eq!(
            fields(r#"{"model_name":"iris","features":[1,2,3]}"#, &iris()),
            ["features"]
        );
        assert_eq!(fields(r#"{"model_name":"iris"}"#, &iris()), ["features"]);
        assert_eq!(
            fields(r#"{"model_name":"iris","features":[1,2,3,1e39]}"#, &iris()),
            ["features[3]"]
        );
        assert_eq!(
            fields(
                r#"{"model_name":"iris","prompt":"x","features":[1,2,3,4]}"#,
                &iris()
            ),
            ["prompt"]
        );
        assert!(fields(r#"{"model_name":"sentiment","prompt":"hi"}"#, &sentiment()).is_empty());
        assert_eq!(
            fields(r#"{"model_name":"sentiment","prompt":""}"#, &sentiment()),
            ["prompt"]
        );
        let long = format!(
            r#"{{"model_name":"sentiment","prompt":"{}"}}"#,
            "a".repeat(101)
        );
        assert_eq!(fields(&long, &sentiment()), ["prompt"]);
    }

    #[test]
    fn batch_inputs_are_checked_one_by_one() {
        let ok = r#"{"model_name":"sentiment","inputs":[{"prompt":"a"},{"prompt":"b"}]}"#;
        let parsed = parse(ok.as_bytes()).unwrap();
        match validate(parsed, &sentiment(), 100, 3).unwrap() {
            Validated::Batch(b) => assert_eq!(b.prompts, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fields(
                r#"{"model_name":"sentiment","inputs":[{"prompt":"a"},{"prompt":" "}]}"#,
                &sentiment()
            ),
            ["inputs[1].prompt"]
        );
        assert_eq!(
            fields(r#"{"model_name":"sentiment","inputs":[]}"#, &sentiment()),
            ["inputs"]
        );
        let four = r#"{"model_name":"sentiment","inputs":[{"prompt":"a"},{"prompt":"a"},{"prompt":"a"},{"prompt":"a"}]}"#;
        assert_eq!(fields(four, &sentiment()), ["inputs"]);
    }
}
