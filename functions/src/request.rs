//! The JSON body of `POST /v1/predict`, its parsing (with field paths in errors) and its
//! validation against the model's signature. Nothing invalid leaves this module.
//!
//! Single: `{"model_name": "...", "prompt": "..."}` or `{"model_name": "...", "features": [..]}`.
//! Batch:  `{"model_name": "...", "inputs": [{"prompt": "..."}, ...]}` (or `features` items).
//!
//! Parsing classifies failures by structure, never by a parser's wording: serde_json's
//! error category tells malformed JSON from the rest, and each object's members are read
//! one by one (kept as raw JSON until their field is known), so an unknown, repeated,
//! missing or mistyped field is named by the code that found it.

use std::collections::HashSet;

use inferencehub_proto::pb::{FeatureRow, ModelInfo, PredictBatchRequest, PredictRequest};
use inferencehub_proto::{FieldError, Input, InputSignature};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

/// A predict body as sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PredictBody {
    /// Model to call.
    pub model_name: String,
    /// The single form's input.
    pub input: InputBody,
    /// The batch form's inputs.
    pub inputs: Option<Vec<InputBody>>,
}

/// One input: what was sent of `prompt` and `features` (`null` counts as absent).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InputBody {
    /// Text input.
    pub prompt: Option<String>,
    /// Tabular input, as JSON numbers.
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

/// A JSON object's members in the order sent, repeats kept so they can be refused.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        de.deserialize_map(ObjectVisitor)
    }
}

/// `field.name`, or `name` at the top level.
/// The checks the gateway runs for `model`: its advertised signature, with prompts capped
/// by the gateway's own `max_prompt_bytes` as well.
pub fn gateway_signature(
    model: &ModelInfo,
    max_prompt_bytes: usize,
) -> Result<InputSignature, Vec<FieldError>> {
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
    Ok(signature)
}

/// The path of member `name` under `field`: `field.name` for plain names, else the name
/// as a JSON string in brackets (`field[""]`, `["a.b"]`), so an empty or odd key still
/// names a field unambiguously. Long keys are cut (the path is echoed in problems).
fn join(field: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let mut name = name.to_string();
    if name.chars().count() > 64 {
        name = name.chars().take(64).chain(['…']).collect();
    }
    match (plain, field.is_empty()) {
        (true, true) => name,
        (true, false) => format!("{field}.{name}"),
        (false, _) => format!(
            "{field}[{}]",
            serde_json::to_string(&name).unwrap_or_default()
        ),
    }
}

/// A JSON error by category: malformed JSON is the body's fault, a wrong shape the field's.
fn json_error(field: &str, expected: &str, e: &serde_json::Error) -> FieldError {
    match e.classify() {
        Category::Data => FieldError::new(field, format!("must be {expected}")),
        Category::Eof => FieldError::new(
            "body",
            format!(
                "is not valid JSON: it ends before the value is complete (line {}, column {})",
                e.line(),
                e.column()
            ),
        ),
        Category::Syntax | Category::Io => FieldError::new(
            "body",
            format!(
                "is not valid JSON: syntax error at line {}, column {}",
                e.line(),
                e.column()
            ),
        ),
    }
}

/// The members of the object `json` at `field` (`""` for the body itself), each name once.
fn object(field: &str, json: &str) -> Result<Vec<(String, Box<RawValue>)>, FieldError> {
    let Members(members) = serde_json::from_str(json).map_err(|e| {
        json_error(
            if field.is_empty() { "body" } else { field },
            "a JSON object",
            &e,
        )
    })?;
    let mut seen = HashSet::new();
    for (name, _) in &members {
        if !seen.insert(name.as_str()) {
            return Err(FieldError::new(
                join(field, name),
                "is given more than once",
            ));
        }
    }
    Ok(members)
}

/// `raw` as a `T`, or `None` for `null`.
fn value<'a, T: Deserialize<'a>>(
    field: &str,
    expected: &str,
    raw: &'a RawValue,
) -> Result<Option<T>, FieldError> {
    serde_json::from_str::<Option<T>>(raw.get()).map_err(|e| json_error(field, expected, &e))
}

/// An array of numbers, naming the element at fault.
fn numbers(field: &str, raw: &RawValue) -> Result<Option<Vec<f64>>, FieldError> {
    let Some(items) = value::<Vec<&RawValue>>(field, "an array of numbers", raw)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}[{i}]");
            serde_json::from_str::<f64>(item.get()).map_err(|e| json_error(&at, "a number", &e))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The fields of one input object at `field`.
fn input(field: &str, members: Vec<(String, Box<RawValue>)>) -> Result<InputBody, FieldError> {
    let mut input = InputBody::default();
    for (name, raw) in members {
        let at = join(field, &name);
        match name.as_str() {
            "prompt" => input.prompt = value(&at, "a string", &raw)?,
            "features" => input.features = numbers(&at, &raw)?,
            _ => return Err(FieldError::new(at, "is not a known field")),
        }
    }
    Ok(input)
}

/// Parses the body, naming the field at fault.
pub fn parse(body: &[u8]) -> Result<PredictBody, FieldError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| FieldError::new("body", "must be UTF-8 encoded JSON"))?;
    if text.trim().is_empty() {
        return Err(FieldError::new("body", "must be a JSON object"));
    }
    let mut parsed = PredictBody::default();
    let mut model_name = None;
    let mut single = Vec::new();
    for (name, raw) in object("", text)? {
        match name.as_str() {
            "model_name" => model_name = value::<String>("model_name", "a string", &raw)?,
            "inputs" => {
                let Some(items) = value::<Vec<&RawValue>>("inputs", "an array of objects", &raw)?
                else {
                    continue;
                };
                let mut inputs = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let at = format!("inputs[{i}]");
                    inputs.push(input(&at, object(&at, item.get())?)?);
                }
                parsed.inputs = Some(inputs);
            }
            _ => single.push((name, raw)),
        }
    }
    parsed.input = input("", single)?;
    let model_name = model_name.ok_or_else(|| FieldError::new("model_name", "is required"))?;
    if !is_model_name(&model_name) {
        return Err(FieldError::new(
            "model_name",
            "must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    parsed.model_name = model_name;
    Ok(parsed)
}

/// `[A-Za-z0-9._-]{1,64}`: what a model folder may be called. Anything else is refused
/// before the name reaches a metric dimension, a log line or a `WWW-Authenticate` header.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

/// Validates a parsed body against `model`. `max_prompt_bytes` is the gateway's own cap
/// (the worker's advertised cap applies too); `max_inputs` bounds the batch form. Single
/// and batch inputs go through the one check the worker runs too.
pub fn validate(
    body: PredictBody,
    model: &ModelInfo,
    max_prompt_bytes: usize,
    max_inputs: usize,
) -> Result<Validated, Vec<FieldError>> {
    let signature = gateway_signature(model, max_prompt_bytes)?;
    let (batch, inputs) = match body.inputs {
        Some(inputs) => {
            let mut errors = Vec::new();
            if body.input != InputBody::default() {
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
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            (true, inputs)
        }
        None => (false, vec![body.input]),
    };
    let field = |i: usize, name: &str| {
        if batch {
            format!("inputs[{i}].{name}")
        } else {
            name.to_string()
        }
    };
    // Narrowing to f32 comes first: a value beyond f32 is named before any count check.
    let mut errors = Vec::new();
    let rows: Vec<Option<Vec<f32>>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            input
                .features
                .as_deref()
                .map(|f| narrow(&field(i, "features"), f, &mut errors))
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let errors = signature.check_all(
        inputs.iter().zip(&rows).map(|(input, row)| Input {
            prompt: input.prompt.as_deref(),
            features: row.as_deref(),
        }),
        field,
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let model_name = body.model_name;
    let mut prompts: Vec<String> = inputs
        .into_iter()
        .map(|i| i.prompt.unwrap_or_default())
        .collect();
    let mut rows: Vec<Vec<f32>> = rows.into_iter().map(Option::unwrap_or_default).collect();
    if !batch {
        return Ok(Validated::Single(PredictRequest {
            features: rows.pop().unwrap_or_default(),
            model_name,
            prompt: prompts.pop().unwrap_or_default(),
            request_id: String::new(),
        }));
    }
    let mut request = PredictBatchRequest {
        model_name,
        ..Default::default()
    };
    match signature {
        InputSignature::Text { .. } => request.prompts = prompts,
        InputSignature::Tabular { .. } => {
            request.rows = rows
                .into_iter()
                .map(|features| FeatureRow { features })
                .collect();
        }
    }
    Ok(Validated::Batch(request))
}

/// A field the worker named, in the API's terms: the worker's batch fields `prompts[i]`
/// and `rows[i].…` are the request's `inputs[i].prompt` and `inputs[i].…`.
pub fn api_field(worker_field: &str) -> String {
    let indexed = |rest: &str| {
        rest.split_once(']')
            .map(|(i, tail)| (i.to_string(), tail.to_string()))
    };
    if let Some((i, tail)) = worker_field.strip_prefix("prompts[").and_then(indexed) {
        return format!("inputs[{i}].prompt{tail}");
    }
    if let Some((i, tail)) = worker_field.strip_prefix("rows[").and_then(indexed) {
        return format!("inputs[{i}]{tail}");
    }
    match worker_field {
        "prompts" | "rows" => "inputs".to_string(),
        other => other.to_string(),
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
        // Keys that are empty or not plain names are quoted (found by the fuzz tests).
        assert_eq!(fields(r#"{"":null}"#, &iris()), [r#"[""]"#]);
        assert_eq!(
            fields(r#"{"model_name":"iris","a.b":1}"#, &iris()),
            [r#"["a.b"]"#]
        );
        assert_eq!(fields(r#"{"model_name":7}"#, &iris()), ["model_name"]);
        // Names that could add WWW-Authenticate parameters or unbounded metric dimensions.
        let long = "m".repeat(65);
        for name in ["", "iris\", scope=\"x", "a,b", "a b", long.as_str(), "ïris"] {
            let body = serde_json::json!({"model_name": name, "features": [1, 2, 3, 4]});
            assert_eq!(
                fields(&body.to_string(), &iris()),
                ["model_name"],
                "{name:?}"
            );
        }
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
