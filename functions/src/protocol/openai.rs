//! OpenAI's embeddings API (`POST /v1/embeddings`), so the `openai` client, LangChain,
//! LlamaIndex and vector databases' integrations work unchanged against embedding models:
//! `input` a text or a list of texts, `model`, `encoding_format` (`float` or `base64`:
//! little-endian f32), `dimensions` (the vector cut to its first values and normalised
//! again), `user` (ignored), and InferenceHub's `truncate` (default `true`: texts longer than
//! the model's window are cut, as sentence-transformers does; `false` refuses them).
//!
//! Problems name OpenAI's parameters (`input`, `input[2]`, `model`, `dimensions`); the
//! route answers them with OpenAI's `error` object beside the RFC 9457 members.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use inferencehub_proto::FieldError;
use inferencehub_proto::pb::{ModelInfo, ModelTask};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Answer, Protocol, json_body};
use crate::command::{Command, Inputs, Invalid, Place, Sent};
use crate::layers::json_response;
use crate::problem::{NamePlace, Problem};
use crate::router::Matched;

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// A text, or a list of texts (at most `IHUB_GATEWAY_MAX_BATCH_INPUTS`); token-id
    /// arrays are refused.
    #[serde(default)]
    #[schema(required = true, value_type = Object)]
    pub input: Option<Value>,
    /// An embedding model of `GET /v1/models`.
    #[serde(default)]
    #[schema(required = true, value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32, what the `openai` client asks for).
    #[serde(default)]
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
    /// Keep the first `dimensions` values of each vector, normalised again (for models
    /// trained Matryoshka-style); at most the model's dimension.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    /// Ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// `false`: refuse texts longer than the model's window instead of cutting them.
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// One vector: floats, or their little-endian f32 bytes in base64.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// One input's embedding.
#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    /// `embedding`.
    pub object: &'static str,
    /// The input's place in `input`.
    pub index: usize,
    /// The vector.
    pub embedding: Vector,
    /// Whether the text was cut at the model's window.
    pub truncated: bool,
}

/// Tokens read.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens of every input, special tokens included, after truncation.
    pub prompt_tokens: u64,
    /// The same (embeddings produce no tokens).
    pub total_tokens: u64,
}

/// The answer to `POST /v1/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// `list`.
    pub object: &'static str,
    /// One embedding per input, in input order.
    pub data: Vec<Embedding>,
    /// The model that answered.
    pub model: String,
    /// Tokens read.
    pub usage: Usage,
}

/// `POST /v1/embeddings` as a [`Protocol`].
#[derive(Debug)]
pub struct OpenAi {
    /// `input` was one text, not a list.
    single: bool,
    base64: bool,
    dimensions: Option<usize>,
}

impl NamePlace for OpenAi {
    fn name(&self, place: &Place) -> String {
        match place {
            Place::Model => "model".into(),
            Place::Input(i, _) if !self.single => format!("input[{i}]"),
            Place::Named(name) => name.clone(),
            Place::Output(_) => "dimensions".into(),
            _ => "input".into(),
        }
    }
}

fn refuse(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid(vec![FieldError::new(field, message)])
}

/// `input` as texts: one string, or a non-empty list of strings.
fn texts(input: Value) -> Result<(bool, Vec<String>), Problem> {
    let token_ids =
        "token-id arrays are not accepted: send the text (a string or a list of strings)";
    match input {
        Value::String(s) => Ok((true, vec![s])),
        Value::Array(items) if items.is_empty() => {
            Err(refuse("input", "must hold at least one text"))
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(refuse("input", token_ids)),
                _ => Err(refuse(&format!("input[{i}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()
            .map(|texts| (false, texts)),
        _ => Err(refuse("input", "must be a string or a list of strings")),
    }
}

impl Protocol for OpenAi {
    fn decode(req: &Request, _: &Matched) -> Result<(Self, Command), Problem> {
        let body: EmbeddingsRequest =
            json_body(req.body()).map_err(|e| Problem::invalid(vec![e]))?;
        let model = body.model.ok_or_else(|| refuse("model", "is required"))?;
        let input = body.input.ok_or_else(|| refuse("input", "is required"))?;
        let base64 = match body.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(_) => return Err(refuse("encoding_format", "must be float or base64")),
        };
        if body.dimensions == Some(0) {
            return Err(refuse("dimensions", "must be at least 1"));
        }
        let (single, texts) = texts(input)?;
        let command = Command {
            model,
            version: None,
            inputs: Inputs::Fields(
                texts
                    .into_iter()
                    .map(|p| Sent {
                        prompt: Some(p),
                        features: None,
                    })
                    .collect(),
            ),
            outputs: Some(Vec::new()),
            refuse_truncation: body.truncate == Some(false),
        };
        let protocol = Self {
            single,
            base64,
            dimensions: body.dimensions.map(|d| d as usize),
        };
        Ok((protocol, command))
    }

    fn check_model(&self, model: &ModelInfo) -> Result<(), Vec<Invalid>> {
        if model.task() != ModelTask::Embedding {
            return Err(vec![Invalid::new(
                Place::Model,
                format!(
                    "{:?} is not an embedding model (see GET /v1/models: task `embedding`)",
                    model.name
                ),
            )]);
        }
        match self.dimensions {
            Some(d) if d > model.value_count as usize => Err(vec![Invalid::new(
                Place::Named("dimensions".into()),
                format!(
                    "is {d}, larger than the model's dimension {}",
                    model.value_count
                ),
            )]),
            _ => Ok(()),
        }
    }

    fn encode(self, answer: Answer<'_>) -> Response<Body> {
        let batch = answer.batch;
        let mut tokens = 0u64;
        let data = batch
            .results
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                tokens += u64::from(r.tokens);
                let mut v = r.values;
                if let Some(d) = self.dimensions.filter(|&d| d < v.len()) {
                    v.truncate(d);
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                let embedding = if self.base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Vector::Base64(STANDARD.encode(bytes))
                } else {
                    Vector::Float(v)
                };
                Embedding {
                    object: "embedding",
                    index,
                    embedding,
                    truncated: r.truncated,
                }
            })
            .collect();
        json_response(
            200,
            &EmbeddingsResponse {
                object: "list",
                data,
                model: batch.model_name,
                usage: Usage {
                    prompt_tokens: tokens,
                    total_tokens: tokens,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferencehub_proto::pb::{PredictBatchResponse, PredictResponse};

    fn decode(body: &str) -> Result<(OpenAi, Command), Vec<String>> {
        let req: Request = http::Request::builder()
            .method("POST")
            .uri("/v1/embeddings")
            .body(Body::Text(body.into()))
            .unwrap();
        let route = Matched::find(crate::router::Function::Predict, &req).unwrap();
        OpenAi::decode(&req, &route).map_err(|p| p.errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn requests_decode_to_texts_and_refusals_name_the_parameter() {
        let (one, c) = decode(r#"{"model":"minilm","input":"hello","user":"u1"}"#).unwrap();
        assert!(one.single && !one.base64);
        assert_eq!(c.model, "minilm");
        assert!(!c.refuse_truncation);
        let (many, c) = decode(
            r#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":8,"truncate":false}"#,
        )
        .unwrap();
        assert!(!many.single && many.base64 && many.dimensions == Some(8));
        assert!(c.refuse_truncation);
        let Inputs::Fields(sent) = c.inputs else {
            panic!()
        };
        assert_eq!(sent[1].prompt.as_deref(), Some("b"));
        for (body, field) in [
            (r#"{"input":"a"}"#, "model"),
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[1,2,3]}"#, "input"),
            (r#"{"model":"m","input":[[1,2],[3]]}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":["a",null]}"#, "input[1]"),
            (
                r#"{"model":"m","input":"a","encoding_format":"hex"}"#,
                "encoding_format",
            ),
            (r#"{"model":"m","input":"a","dimensions":0}"#, "dimensions"),
            (r#"{"model":"m","input":"a","dimensions":-1}"#, "dimensions"),
            (
                r#"{"model":"m","input":"a","temperature":1}"#,
                "temperature",
            ),
        ] {
            assert_eq!(decode(body).unwrap_err(), [field], "{body}");
        }
    }

    #[test]
    fn only_embedding_models_answer_and_dimensions_fit_the_model() {
        let (protocol, _) = decode(r#"{"model":"m","input":"a","dimensions":8}"#).unwrap();
        let model = ModelInfo {
            name: "m".into(),
            task: ModelTask::Embedding as i32,
            value_count: 4,
            ..Default::default()
        };
        let refused = protocol.check_model(&model).unwrap_err();
        assert_eq!(protocol.name(&refused[0].place), "dimensions");
        let classifier = ModelInfo {
            task: ModelTask::Classification as i32,
            ..model
        };
        let refused = protocol.check_model(&classifier).unwrap_err();
        assert_eq!(protocol.name(&refused[0].place), "model");
    }

    #[test]
    fn vectors_are_cut_renormalised_and_encoded_as_asked() {
        let batch = PredictBatchResponse {
            model_name: "m".into(),
            results: vec![PredictResponse {
                values: vec![3.0, 4.0, 12.0],
                tokens: 5,
                truncated: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let protocol = OpenAi {
            single: true,
            base64: true,
            dimensions: Some(2),
        };
        let response = protocol.encode(Answer {
            model: &ModelInfo::default(),
            batch,
            request_id: "r",
        });
        let Body::Text(text) = response.body() else {
            panic!()
        };
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["data"][0]["truncated"], true);
        let bytes = STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, [0.6, 0.8]);
    }
}
