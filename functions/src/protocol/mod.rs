//! The wire formats of inference. Each is a codec: it decodes a request into a
//! [`Command`], names the places of its problems in its own terms ([`NamePlace`]), and
//! encodes the worker's answer; auth, validation, cost, limit and the worker call exist
//! once, in [`crate::infer`]. A new protocol is one implementation of [`Protocol`] and a
//! line in [`crate::router::ROUTES`].
//!
//! The serde types in [`v1`] and [`v2`] are the ones that parse and write the bodies and
//! the ones the OpenAPI document is generated from.

pub mod openai;
pub mod v1;
pub mod v2;

use inferencehub_proto::pb::{ModelInfo, PredictBatchResponse};
use lambda_http::{Body, Request, Response};
use std::collections::HashSet;

use serde::Deserialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;

use crate::command::Command;
use crate::problem::{NamePlace, Problem};
use crate::router::Matched;

/// One wire format of inference.
pub trait Protocol: NamePlace + Sized + Send + Sync {
    /// Reads the request into a command, keeping what the answer needs (the single form,
    /// the caller's id, which outputs go as binary).
    fn decode(req: &Request, route: &Matched) -> Result<(Self, Command), Problem>;

    /// Whether this request can be answered by `model` at all (a protocol for one task
    /// refuses models of another), before anything is charged.
    fn check_model(&self, _model: &ModelInfo) -> Result<(), Vec<crate::command::Invalid>> {
        Ok(())
    }

    /// The answer.
    fn encode(self, answer: Answer<'_>) -> Response<Body>;
}

/// What the worker computed for a command.
pub struct Answer<'a> {
    /// The model, as the catalogue describes it.
    pub model: &'a ModelInfo,
    /// One result per input, in input order.
    pub batch: PredictBatchResponse,
    /// This request's id.
    pub request_id: &'a str,
}

/// A JSON body as `T`, naming the field at fault by its path (`inputs[0].features[1]`;
/// `body` for the body itself and for malformed JSON). Only a JSON object is a body.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, inferencehub_proto::FieldError> {
    use inferencehub_proto::FieldError;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| FieldError::new("body", "must be UTF-8 encoded JSON"))?;
    if !text.trim_start().starts_with('{') {
        return Err(FieldError::new("body", "must be a JSON object"));
    }
    // Repeated keys first: serde would name only the object that holds them.
    let value = parse::<Unique>(text).and_then(|_| parse::<T>(text));
    value.map_err(|(path, inner)| {
        let position = format!(" at line {} column {}", inner.line(), inner.column());
        let text = inner.to_string();
        let message = text.strip_suffix(&position).unwrap_or(&text);
        match inner.classify() {
            Category::Data => {
                let field = if path.is_empty() { "body".into() } else { path };
                FieldError::new(field, message)
            }
            Category::Eof => FieldError::new(
                "body",
                format!(
                    "is not valid JSON: it ends before the value is complete (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            ),
            Category::Syntax | Category::Io => FieldError::new(
                "body",
                format!(
                    "is not valid JSON: {message} (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            ),
        }
    })
}

/// Any JSON value whose objects never repeat a key; a repeated key is refused at its path.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(Unique)
    }
}

/// Refuses the value of a repeated key (so the refusal's path ends in that key).
struct Repeated;

impl<'de> DeserializeSeed<'de> for Repeated {
    type Value = Unique;
    fn deserialize<D: serde::Deserializer<'de>>(self, _: D) -> Result<Unique, D::Error> {
        Err(D::Error::custom("is given more than once"))
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = Unique;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.insert(key) {
                map.next_value::<Unique>()?;
            } else {
                map.next_value_seed(Repeated)?;
            }
        }
        Ok(Unique)
    }
}

/// `text` as one JSON `T` and nothing after it; a failure with the path it happened at.
fn parse<T: DeserializeOwned>(text: &str) -> Result<T, (String, serde_json::Error)> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de)
        .map_err(|e| (path_name(e.path()), e.into_inner()))?;
    de.end().map_err(|e| (String::new(), e))?;
    Ok(value)
}

/// A JSON path as problems name it: `a.b[0].c`, with keys that are empty or not plain
/// names quoted in brackets (`[""]`, `["a.b"]`) so every key is named unambiguously, and
/// long keys cut (the path is echoed back).
fn path_name(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => out = join(&out, key),
            Segment::Unknown => out.push_str("[?]"),
        }
    }
    out
}

/// The path of member `name` under `field`.
pub fn join(field: &str, name: &str) -> String {
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

/// Deserializes JSON numbers as `f32`, refusing any beyond the 32-bit float range (JSON
/// has no NaN or infinity, so every value that fits is finite).
pub(crate) mod finite_f32 {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};

    /// One number, narrowed.
    pub fn narrow<E: Error>(v: f64) -> Result<f32, E> {
        let narrowed = v as f32;
        if narrowed.is_finite() {
            Ok(narrowed)
        } else {
            Err(E::custom(
                "must be a finite number within the 32-bit float range",
            ))
        }
    }

    /// One number, narrowed while it is read, so a refusal names its element.
    struct Narrowed(f32);

    impl<'de> serde::Deserialize<'de> for Narrowed {
        fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            let v = f64::deserialize(de)?;
            narrow(v).map(Narrowed)
        }
    }

    struct Values;

    impl<'de> Visitor<'de> for Values {
        type Value = Vec<f32>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of numbers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(Narrowed(v)) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
    }

    /// `Option<Vec<f32>>` from an array of numbers or `null`.
    pub fn option<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<f32>>, D::Error> {
        struct Maybe;
        impl<'de> Visitor<'de> for Maybe {
            type Value = Option<Vec<f32>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
                de.deserialize_seq(Values).map(Some)
            }
        }
        de.deserialize_option(Maybe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        model_name: Option<String>,
        #[serde(default, deserialize_with = "finite_f32::option")]
        features: Option<Vec<f32>>,
        inputs: Option<Vec<Item>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        prompt: Option<String>,
    }

    fn field(body: &str) -> String {
        json_body::<Body>(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn errors_name_the_field_by_its_path() {
        assert_eq!(field(""), "body");
        assert_eq!(field("{"), "body");
        assert_eq!(field("[1]"), "body");
        assert_eq!(field("{} x"), "body");
        assert_eq!(field(r#"{"":null}"#), r#"[""]"#);
        assert_eq!(field(r#"{"a.b":1}"#), r#"["a.b"]"#);
        assert_eq!(field(r#"{"features":[1,"a"]}"#), "features[1]");
        assert_eq!(field(r#"{"features":[1,1e39]}"#), "features[1]");
        assert_eq!(field(r#"{"inputs":[{"y":1}]}"#), "inputs[0].y");
        assert_eq!(field(r#"{"model_name":7}"#), "model_name");
        assert_eq!(
            field(r#"{"model_name":"a","model_name":"b"}"#),
            "model_name"
        );
        assert_eq!(
            field(r#"{"inputs":[{"prompt":"a","prompt":"b"}]}"#),
            "inputs[0].prompt"
        );
        let e = json_body::<Body>(br#"{"features":[1e39]}"#).unwrap_err();
        assert_eq!(
            e.message,
            "must be a finite number within the 32-bit float range"
        );
        let ok: Body = json_body(br#"{"features":[1, 2.5, -3e38], "model_name": null}"#).unwrap();
        assert_eq!(ok.features, Some(vec![1.0, 2.5, -3e38]));
    }
}
