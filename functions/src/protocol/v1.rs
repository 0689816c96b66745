//! InferenceHub's own JSON (`/v1`): `POST /v1/predict` and the catalogue's model view.
//!
//! Single: `{"model_name": "...", "prompt": "..."}` or `{"model_name": "...", "features": [..]}`.
//! Batch:  `{"model_name": "...", "inputs": [{"prompt": "..."}, ...]}` (or `features` items).
//! Problems name fields as the body holds them: `features[2]`, `inputs[1].prompt`.

use inferencehub_proto::FieldError;
use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, PredictResponse as WorkerResult};
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::v2::TensorMetadata;
use super::{Answer, Protocol, finite_f32, json_body};
use crate::command::{Command, Inputs, Place, Sent};
use crate::layers::json_response;
use crate::problem::{NamePlace, Problem};
use crate::router::Matched;

/// One input of a batch.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictInput {
    /// Text, for text models.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Features, for tabular models (as many as the model takes, each within the 32-bit
    /// float range).
    #[serde(default, deserialize_with = "finite_f32::option")]
    #[schema(value_type = Option<Vec<f64>>)]
    pub features: Option<Vec<f32>>,
    /// Models with named inputs (see `inputs` in `GET /v1/models`): each input by name,
    /// a nested array of its shape without the first dimension (or a number, boolean or
    /// string where that shape holds one element).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tensors: Option<Map<String, Value>>,
}

/// `POST /v1/predict`: one input (`prompt` or `features`) or a batch (`inputs`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// `[A-Za-z0-9._-]{1,64}`, one of `GET /v1/models`.
    #[serde(default)]
    #[schema(required = true, value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub model_name: Option<String>,
    /// The version to compute with (one of the model's `versions`); its default when absent.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub model_version: Option<String>,
    /// Text, for text models.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Features, for tabular models.
    #[serde(default, deserialize_with = "finite_f32::option")]
    #[schema(value_type = Option<Vec<f64>>)]
    pub features: Option<Vec<f32>>,
    /// Models with named inputs: each input by name (see [`PredictInput::tensors`]).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tensors: Option<Map<String, Value>>,
    /// A batch (at most `IHUB_GATEWAY_MAX_BATCH_INPUTS`).
    #[serde(default)]
    #[schema(min_items = 1)]
    pub inputs: Option<Vec<PredictInput>>,
}

/// Probability per label, in the model's label order.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(value_type = std::collections::BTreeMap<String, f32>)]
pub struct Scores(pub Vec<(String, f32)>);

impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(l, p)| (l, p)))
    }
}

/// One prediction: a classifier's `label`, `probability` and `scores`, or a regressor's
/// `values`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Prediction {
    /// The most probable label (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its probability (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
    /// Probability per label (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// The predicted value(s) (regressors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f32>>,
}

impl Prediction {
    fn of(r: &WorkerResult) -> Self {
        if !r.values.is_empty() {
            return Self {
                label: None,
                probability: None,
                scores: None,
                values: Some(r.values.clone()),
            };
        }
        Self {
            label: Some(r.label.clone()),
            probability: Some(r.probability),
            scores: Some(Scores(
                r.scores
                    .iter()
                    .map(|s| (s.label.clone(), s.probability))
                    .collect(),
            )),
            values: None,
        }
    }
}

/// The answer to `POST /v1/predict`: one prediction's members at the top level, or
/// `results` for a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The worker's own time for the call, in milliseconds.
    pub latency_ms: f64,
    /// This request's id.
    pub request_id: String,
    /// The single form's prediction (empty for the batch form).
    #[serde(flatten)]
    pub prediction: Prediction,
    /// The batch form's predictions, in input order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<Prediction>>,
}

/// What an input of a model holds.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum InputView {
    /// A tabular model's features.
    Tabular {
        /// How many.
        features: u32,
        /// Their names, where the model folder gives them.
        feature_names: Vec<String>,
    },
    /// A text model's prompt.
    Text {
        /// Its limits.
        prompt: PromptLimits,
    },
}

/// The limits of a text model's prompt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PromptLimits {
    /// Tokens a prompt is truncated at.
    pub max_tokens: u32,
    /// Largest prompt the worker accepts, in bytes.
    pub max_bytes: u32,
}

/// A model of the catalogue.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Model)]
pub struct ModelView {
    /// Its name.
    pub name: String,
    /// Its version: the default one, which requests without `model_version` get.
    pub version: String,
    /// Every version served, oldest first (`model_version` picks one).
    pub versions: Vec<String>,
    /// `text` or `tabular`.
    pub kind: &'static str,
    /// `classification`, `regression` or `embedding`.
    pub task: &'static str,
    /// Labels in output order.
    pub labels: Vec<String>,
    /// Values per answer of a regressor, the dimension of an embedding model.
    pub values: u32,
    /// Embedding models: the vectors' dimension (`POST /v1/embeddings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<u32>,
    /// What an input holds.
    pub input: InputView,
    /// The input tensor as the model declares it.
    pub tensor: Option<TensorMetadata>,
    /// Every input by name, with its element type and shape (`-1`: any size; the first
    /// dimension counts the inputs).
    pub inputs: Vec<TensorMetadata>,
    /// The named outputs the Open Inference Protocol can return besides the answer.
    pub outputs: Vec<TensorMetadata>,
    /// The architecture that was loaded.
    pub architecture: String,
}

impl From<&ModelInfo> for ModelView {
    fn from(m: &ModelInfo) -> Self {
        let (kind, input) = match m.kind() {
            ModelKind::Tabular => (
                "tabular",
                InputView::Tabular {
                    features: m.feature_count,
                    feature_names: m.feature_names.clone(),
                },
            ),
            _ => (
                "text",
                InputView::Text {
                    prompt: PromptLimits {
                        max_tokens: m.max_tokens,
                        max_bytes: m.max_prompt_bytes,
                    },
                },
            ),
        };
        Self {
            name: m.name.clone(),
            version: m.version.clone(),
            versions: vec![m.version.clone()],
            kind,
            task: match m.task() {
                ModelTask::Regression => "regression",
                ModelTask::Embedding => "embedding",
                _ => "classification",
            },
            dimension: (m.task() == ModelTask::Embedding).then_some(m.value_count),
            labels: m.labels.clone(),
            values: m.value_count,
            input,
            tensor: m.input.as_ref().map(TensorMetadata::from),
            inputs: crate::command::input_specs(m)
                .iter()
                .map(TensorMetadata::from)
                .collect(),
            outputs: m.outputs.iter().map(TensorMetadata::from).collect(),
            architecture: m.architecture.clone(),
        }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// The models this token may use.
    pub models: Vec<ModelView>,
    /// Versions of those models that failed to load (never routed to), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<UnavailableVersion>,
}

/// A model version that failed to load.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnavailableVersion {
    /// The model.
    pub name: String,
    /// The version (its folder's name; empty for an unversioned folder).
    pub version: String,
    /// `UNAVAILABLE`.
    pub state: String,
    /// The loader's message.
    pub reason: String,
}

/// `POST /v1/predict` as a [`Protocol`].
#[derive(Debug, Default)]
pub struct V1 {
    /// Whether the single form was sent (answered at the top level).
    single: bool,
}

impl NamePlace for V1 {
    fn name(&self, place: &Place) -> String {
        match place {
            Place::Model => "model_name".into(),
            Place::Batch | Place::Tensors => "inputs".into(),
            Place::Tensor(e) if self.single => super::join("tensors", &e.name),
            Place::Tensor(e) => {
                super::join(&format!("inputs[{}].tensors", e.row.unwrap_or(0)), &e.name)
            }
            Place::Input(_, e) if self.single => e.path(),
            Place::Input(i, e) => format!("inputs[{i}].{}", e.path()),
            Place::Output(i) => format!("outputs[{i}]"),
            Place::Named(name) => name.clone(),
        }
    }
}

impl Protocol for V1 {
    fn decode(req: &Request, _: &Matched) -> Result<(Self, Command), Problem> {
        let body: PredictRequest = json_body(req.body()).map_err(|e| Problem::invalid(vec![e]))?;
        let model = body
            .model_name
            .ok_or_else(|| Problem::invalid(vec![FieldError::new("model_name", "is required")]))?;
        let one = PredictInput {
            prompt: body.prompt,
            features: body.features,
            tensors: body.tensors,
        };
        let (single, items) = match body.inputs {
            None => (true, vec![one]),
            Some(inputs) => {
                if one.prompt.is_some() || one.features.is_some() || one.tensors.is_some() {
                    return Err(Problem::invalid(vec![FieldError::new(
                        "inputs",
                        "send either `inputs` or a single `prompt`/`features`/`tensors`, not both",
                    )]));
                }
                (false, inputs)
            }
        };
        // Named values for every input, or the seed's fields for every input.
        let named = items.iter().filter(|i| i.tensors.is_some()).count();
        let inputs = if named == 0 {
            Inputs::Fields(
                items
                    .into_iter()
                    .map(|i| Sent {
                        prompt: i.prompt,
                        features: i.features,
                    })
                    .collect(),
            )
        } else if let Some(k) = items
            .iter()
            .position(|i| i.tensors.is_none() || i.prompt.is_some() || i.features.is_some())
        {
            let field = if single {
                "tensors".to_string()
            } else {
                format!("inputs[{k}].tensors")
            };
            return Err(Problem::invalid(vec![FieldError::new(
                field,
                "every input sends `tensors` alone, or none does",
            )]));
        } else {
            Inputs::Named(items.into_iter().filter_map(|i| i.tensors).collect())
        };
        // v1 answers with the prediction alone: no named outputs.
        let command = Command {
            refuse_truncation: false,
            model,
            version: body.model_version,
            inputs,
            outputs: Some(Vec::new()),
        };
        Ok((Self { single }, command))
    }

    fn encode(self, answer: Answer<'_>) -> Response<Body> {
        let batch = answer.batch;
        let mut predictions = batch.results.iter().map(Prediction::of);
        let (prediction, results) = if self.single {
            (predictions.next().unwrap_or_default(), None)
        } else {
            (Prediction::default(), Some(predictions.collect()))
        };
        json_response(
            200,
            &PredictResponse {
                model_name: batch.model_name,
                model_version: batch.model_version,
                latency_ms: batch.latency_ms,
                request_id: answer.request_id.to_string(),
                prediction,
                results,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferencehub_proto::pb::{LabelScore, PredictBatchResponse};

    fn decode(body: &str) -> Result<(V1, Command), Vec<String>> {
        let req: Request = http::Request::builder()
            .method("POST")
            .uri("/v1/predict")
            .body(Body::Text(body.into()))
            .unwrap();
        let route = Matched {
            route: &crate::router::ROUTES[0],
            params: Vec::new(),
        };
        V1::decode(&req, &route).map_err(|p| p.errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn parse_errors_name_the_field() {
        for (body, field) in [
            ("", "body"),
            ("[1]", "body"),
            (r#"{"features":[1,2,3,4]}"#, "model_name"),
            (r#"{"model_name":"iris","x":1}"#, "x"),
            (r#"{"":null}"#, r#"[""]"#),
            (r#"{"model_name":7}"#, "model_name"),
            (r#"{"model_name":"iris","features":[1,"a"]}"#, "features[1]"),
            (
                r#"{"model_name":"iris","features":[1,2,3,1e39]}"#,
                "features[3]",
            ),
            (r#"{"model_name":"iris","features":[1,2,3,4]} x"#, "body"),
            (
                r#"{"model_name":"iris","inputs":[{"features":[1,2,3,4],"y":1}]}"#,
                "inputs[0].y",
            ),
            (
                r#"{"model_name":"iris","prompt":"x","inputs":[{"prompt":"y"}]}"#,
                "inputs",
            ),
        ] {
            assert_eq!(decode(body).err().unwrap(), [field], "{body}");
        }
    }

    #[test]
    fn single_and_batch_forms_decode_to_one_command_shape() {
        let (single, one) = decode(r#"{"model_name":"iris","features":[1,2]}"#).unwrap();
        let (batch, many) =
            decode(r#"{"model_name":"iris","inputs":[{"features":[1,2]}]}"#).unwrap();
        assert_eq!(one, many);
        assert!(single.single && !batch.single);
        let e =
            inferencehub_proto::InputError::at(inferencehub_proto::InputField::Features, 1, "x");
        assert_eq!(single.name(&Place::Input(0, e.clone())), "features[1]");
        assert_eq!(batch.name(&Place::Input(3, e)), "inputs[3].features[1]");
    }

    #[test]
    fn scores_keep_the_models_label_order() {
        let batch = PredictBatchResponse {
            results: vec![WorkerResult {
                label: "zebra".into(),
                probability: 0.7,
                scores: vec![
                    LabelScore {
                        label: "zebra".into(),
                        probability: 0.7,
                    },
                    LabelScore {
                        label: "ant".into(),
                        probability: 0.3,
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = V1 { single: true }.encode(Answer {
            model: &ModelInfo::default(),
            batch,
            request_id: "r",
        });
        let Body::Text(text) = response.body() else {
            panic!()
        };
        assert!(
            text.contains(r#""scores":{"zebra":0.7,"ant":0.3}"#),
            "{text}"
        );
        assert!(!text.contains("results"), "{text}");
    }
}
