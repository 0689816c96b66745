//! The `ModelInference` gRPC service: validate, prepare (tokenise off the runtime), queue
//! into the model's batcher, and turn predictions into answers.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use inferencehub_proto::pb::model_inference_server::ModelInference;
use inferencehub_proto::pb::{
    LabelScore, ListModelsRequest, ListModelsResponse, ModelInfo, ModelTask, PredictBatchRequest,
    PredictBatchResponse, PredictRequest, PredictResponse,
};
use inferencehub_proto::signature::{batch_field, batch_list};
use inferencehub_proto::{
    ErrorKind, FieldError, Input, InputField, InputSignature, REQUEST_ID_METADATA,
    invalid_argument, is_sane_request_id,
};
use tokenizers::Tokenizer;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::batching::{BatchError, Batcher, Prediction};
use crate::metrics::Metrics;
use crate::models::model::{prepare_input, signature};
use crate::models::{ModelInput, argmax};

/// One model being served.
pub struct ServedModel {
    /// What it is: its `ListModels` entry.
    pub info: ModelInfo,
    /// Text models: its tokenizer.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Its queue.
    pub batcher: Batcher,
}

/// Every model being served, by name.
pub type ModelSet = BTreeMap<String, Arc<ServedModel>>;

/// The gRPC service. Models are filled in once loading finishes; until then calls get
/// UNAVAILABLE (and the health service says NOT_SERVING).
#[derive(Clone)]
pub struct InferenceService {
    models: Arc<OnceLock<ModelSet>>,
    metrics: Arc<Metrics>,
}

impl InferenceService {
    /// A service that answers once `models` is set.
    pub fn new(models: Arc<OnceLock<ModelSet>>, metrics: Arc<Metrics>) -> Self {
        Self { models, metrics }
    }

    fn model(&self, name: &str) -> Result<Arc<ServedModel>, Status> {
        let models = self.loaded()?;
        if name.is_empty() {
            return Err(FieldError::new("model_name", "is required").to_status());
        }
        models.get(name).cloned().ok_or_else(|| {
            ErrorKind::NotFound.status(format!(
                "no model named {:?} (see ListModels)",
                truncate(name, 64)
            ))
        })
    }

    fn loaded(&self) -> Result<&ModelSet, Status> {
        self.models
            .get()
            .ok_or_else(|| ErrorKind::Unavailable.status("models are still loading"))
    }

    /// Tokenises (on the blocking pool) or copies the validated inputs, queues them, and
    /// waits for every prediction.
    async fn run(
        &self,
        model: &ServedModel,
        prompts: Vec<String>,
        rows: Vec<Vec<f32>>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Prediction>, Status> {
        let inputs = match &model.tokenizer {
            Some(tokenizer) => {
                let tokenizer = tokenizer.clone();
                tokio::task::spawn_blocking(move || {
                    prompts
                        .iter()
                        .map(|p| prepare_input(Some(&tokenizer), p, &[]))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .await
                .map_err(|e| internal("tokenizer task", &e))?
                .map_err(|e| internal("tokenizing", &e))?
            }
            None => rows.into_iter().map(ModelInput::Features).collect(),
        };
        let receivers = model
            .batcher
            .submit(inputs, deadline)
            .map_err(|e| batch_status(e, signature(&model.info)))?;
        let mut predictions = Vec::with_capacity(receivers.len());
        for rx in receivers {
            let prediction = rx
                .await
                .map_err(|_| ErrorKind::Unavailable.status("the model is shutting down"))?
                .map_err(|e| batch_status(e, signature(&model.info)))?;
            predictions.push(prediction);
        }
        Ok(predictions)
    }

    fn record<T>(&self, model: &str, result: &Result<T, Status>) {
        let known = self.models.get().is_some_and(|m| m.contains_key(model));
        let model = if known { model } else { "_unknown" };
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .requests
            .with_label_values(&[model, code_name(code)])
            .inc();
    }

    async fn predict_one(
        &self,
        req: PredictRequest,
        request_id: String,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<PredictResponse, Status> {
        let model = self.model(&req.model_name)?;
        signature(&model.info)
            .check(Input::from_proto(&req.prompt, &req.features))
            .map_err(|e| FieldError::new(e.path(), e.message).to_status())?;
        let mut predictions = self
            .run(&model, vec![req.prompt], vec![req.features], deadline)
            .await?;
        let prediction = predictions
            .pop()
            .ok_or_else(|| ErrorKind::Internal.status("no prediction"))?;
        let mut answer = to_response(&model.info, &prediction, request_id);
        answer.latency_ms = millis(started.elapsed());
        Ok(answer)
    }

    async fn predict_many(
        &self,
        req: PredictBatchRequest,
        request_id: String,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<PredictBatchResponse, Status> {
        let model = self.model(&req.model_name)?;
        let signature = signature(&model.info);
        // The proto's batch fields: `prompts` for text models, `rows` for tabular ones.
        let (wanted, unwanted, sent, stray) = match signature.field() {
            InputField::Prompt => ("prompts", "rows", req.prompts.len(), req.rows.len()),
            InputField::Features => ("rows", "prompts", req.rows.len(), req.prompts.len()),
        };
        if stray > 0 {
            return Err(FieldError::new(
                unwanted,
                format!("this model takes `{wanted}`, not `{unwanted}`"),
            )
            .to_status());
        }
        if sent == 0 {
            return Err(FieldError::new(wanted, "needs at least one input").to_status());
        }
        // One check for every element, the one single inputs and the gateway run too.
        let inputs = req
            .prompts
            .iter()
            .map(|p| Input::from_proto(p, &[]))
            .chain(req.rows.iter().map(|r| Input::from_proto("", &r.features)));
        let errors: Vec<FieldError> = signature
            .check_all(inputs)
            .iter()
            .map(|(i, e)| batch_field(*i, e))
            .collect();
        if !errors.is_empty() {
            return Err(invalid_argument(&errors));
        }
        let rows = req.rows.into_iter().map(|r| r.features).collect();
        let prompts = req.prompts;
        let predictions = self.run(&model, prompts, rows, deadline).await?;
        let results = predictions
            .iter()
            .map(|p| to_response(&model.info, p, request_id.clone()))
            .collect();
        Ok(PredictBatchResponse {
            results,
            request_id,
            model_name: model.info.name.clone(),
            model_version: model.info.version.clone(),
            latency_ms: millis(started.elapsed()),
        })
    }
}

#[tonic::async_trait]
impl ModelInference for InferenceService {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata(), started);
        let request_id = request_id(request.metadata(), &request.get_ref().request_id);
        let req = request.into_inner();
        let model = req.model_name.clone();
        let result = self
            .predict_one(req, request_id.clone(), deadline, started)
            .await;
        self.record(&model, &result);
        respond(result, &request_id)
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata(), started);
        let request_id = request_id(request.metadata(), &request.get_ref().request_id);
        let req = request.into_inner();
        let model = req.model_name.clone();
        let result = self
            .predict_many(req, request_id.clone(), deadline, started)
            .await;
        self.record(&model, &result);
        respond(result, &request_id)
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self.loaded()?;
        Ok(Response::new(ListModelsResponse {
            models: models.values().map(|m| m.info.clone()).collect(),
        }))
    }
}

/// A prediction as an answer: label, probability and scores for a classifier; values
/// (and an empty label) for a regressor.
fn to_response(info: &ModelInfo, prediction: &Prediction, request_id: String) -> PredictResponse {
    let mut answer = PredictResponse {
        latency_ms: millis(prediction.queue + prediction.compute),
        request_id,
        model_version: info.version.clone(),
        queue_ms: millis(prediction.queue),
        compute_ms: millis(prediction.compute),
        batch_size: prediction.batch_size as u32,
        model_name: info.name.clone(),
        ..Default::default()
    };
    if info.task() == ModelTask::Regression {
        answer.values = prediction.probabilities.clone();
        return answer;
    }
    let (best, probability) = argmax(&prediction.probabilities);
    answer.probability = probability;
    answer.label = info.labels.get(best).cloned().unwrap_or_default();
    answer.scores = info
        .labels
        .iter()
        .zip(&prediction.probabilities)
        .map(|(label, &probability)| LabelScore {
            label: label.clone(),
            probability,
        })
        .collect();
    answer
}

fn respond<T>(result: Result<T, Status>, request_id: &str) -> Result<Response<T>, Status> {
    let value = MetadataValue::try_from(request_id).ok();
    match result {
        Ok(body) => {
            let mut response = Response::new(body);
            if let Some(v) = value {
                response.metadata_mut().insert(REQUEST_ID_METADATA, v);
            }
            Ok(response)
        }
        Err(mut status) => {
            if let Some(v) = value {
                status.metadata_mut().insert(REQUEST_ID_METADATA, v);
            }
            Err(status)
        }
    }
}

/// A batcher refusal as a status of the shared table; a too-large call names the model's
/// batch field.
fn batch_status(e: BatchError, signature: InputSignature) -> Status {
    match e {
        BatchError::QueueFull { .. } => ErrorKind::Overloaded.status(e.to_string()),
        BatchError::TooManyInputs { .. } => {
            FieldError::new(batch_list(signature.field()), e.to_string()).to_status()
        }
        BatchError::DeadlineExceeded => ErrorKind::DeadlineExceeded.status(e.to_string()),
        BatchError::Closed => ErrorKind::Unavailable.status(e.to_string()),
        BatchError::Model(_) => internal("forward pass", &e),
    }
}

/// Logs the detail and answers INTERNAL without it.
fn internal(what: &str, e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what} failed");
    ErrorKind::Internal.status(format!("{what} failed"))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// The caller's request id if it is a sane token, else a new UUID.
fn request_id(metadata: &MetadataMap, field: &str) -> String {
    let from_metadata = metadata
        .get(REQUEST_ID_METADATA)
        .and_then(|v| v.to_str().ok());
    let candidate = if field.is_empty() {
        from_metadata.unwrap_or("")
    } else {
        field
    };
    if is_sane_request_id(candidate) {
        candidate.to_string()
    } else {
        uuid::Uuid::new_v4().to_string()
    }
}

/// The deadline the client set with the `grpc-timeout` header, if any.
fn grpc_deadline(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    now.checked_add(timeout)
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let now = Instant::now();
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", MetadataValue::from_static("250m"));
        assert_eq!(
            grpc_deadline(&md, now),
            Some(now + Duration::from_millis(250))
        );
        md.insert("grpc-timeout", MetadataValue::from_static("2S"));
        assert_eq!(grpc_deadline(&md, now), Some(now + Duration::from_secs(2)));
        md.insert("grpc-timeout", MetadataValue::from_static("x"));
        assert_eq!(grpc_deadline(&md, now), None);
        assert_eq!(grpc_deadline(&MetadataMap::new(), now), None);
    }

    #[test]
    fn keeps_sane_request_ids_and_replaces_others() {
        let md = MetadataMap::new();
        assert_eq!(request_id(&md, "abc-123"), "abc-123");
        let replaced = request_id(&md, "bad id\n");
        assert_ne!(replaced, "bad id\n");
        assert_eq!(replaced.len(), 36);
        let mut md = MetadataMap::new();
        md.insert(REQUEST_ID_METADATA, MetadataValue::from_static("from-meta"));
        assert_eq!(request_id(&md, ""), "from-meta");
    }
}
