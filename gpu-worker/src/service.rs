//! The `ModelInference` gRPC service: validate, prepare (tokenise off the runtime), queue
//! into the model's batcher, and turn predictions into answers.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use inferencehub_proto::pb::model_inference_server::ModelInference;
use inferencehub_proto::pb::{
    FeatureRow, LabelScore, ListModelsRequest, ListModelsResponse, ModelInfo, ModelTask,
    PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse, Tensor,
};
use inferencehub_proto::signature::{batch_field, batch_list};
use inferencehub_proto::tensor::{self, Member};
use inferencehub_proto::{
    DataType, ErrorKind, FieldError, Input, InputField, InputSignature, REQUEST_ID_METADATA,
    invalid_argument, is_sane_request_id,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::batching::{BatchError, Batcher, Prediction};
use crate::metrics::Metrics;
use crate::models::model::signature;
use crate::models::tokens::PromptTokenizer;
use crate::models::{ModelInput, Output, argmax};
use crate::tls::Call;

/// One model being served.
pub struct ServedModel {
    /// What it is: its `ListModels` entry.
    pub info: ModelInfo,
    /// Text models: its tokenizer.
    pub tokenizer: Option<Arc<PromptTokenizer>>,
    /// Its queue.
    pub batcher: Batcher,
    /// The memory it holds while loaded.
    pub resident: Resident,
}

/// The bytes a served version holds: counted in the worker's total and in its
/// `inferencehub_worker_model_resident_bytes` series from load until it unloads.
pub struct Resident {
    bytes: u64,
    total: Arc<std::sync::atomic::AtomicU64>,
    gauge: prometheus::IntGauge,
}

impl Resident {
    /// Claims `bytes` for version `version` of `name` in `total` and the metrics.
    pub fn claim(
        bytes: u64,
        total: &Arc<std::sync::atomic::AtomicU64>,
        metrics: &Metrics,
        name: &str,
        version: &str,
    ) -> Self {
        total.fetch_add(bytes, std::sync::atomic::Ordering::SeqCst);
        let gauge = metrics.resident_bytes.with_label_values(&[name, version]);
        gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        Self {
            bytes,
            total: total.clone(),
            gauge,
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::SeqCst);
        self.gauge
            .sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

impl Drop for ServedModel {
    /// Unloaded (no set lists it, no call holds it): the model stops once its queue is done.
    fn drop(&mut self) {
        self.batcher.close();
    }
}

/// Every served version of one model.
#[derive(Clone)]
pub struct ServedVersions {
    /// What requests that name no version get.
    pub default: Arc<ServedModel>,
    /// Each version by name (the default among them).
    pub versions: BTreeMap<String, Arc<ServedModel>>,
    /// The canary split's weight of each version (empty without a split).
    pub weights: BTreeMap<String, u32>,
}

/// Every model being served, by name.
pub type ModelSet = BTreeMap<String, ServedVersions>;

/// A version that failed to load: what `ListModels` shows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// The model.
    pub name: String,
    /// The version (its folder name, or `""` for an unversioned folder).
    pub version: String,
    /// The loader's message.
    pub reason: String,
}

/// The models being served, replaced whole when the repository changes (readers keep the
/// set they took for the length of a call), and the versions that failed to load.
#[derive(Default)]
pub struct ModelStore {
    set: RwLock<Option<Arc<ModelSet>>>,
    unavailable: RwLock<Vec<Unavailable>>,
}

impl ModelStore {
    /// The current set, once loading finished.
    pub fn get(&self) -> Option<Arc<ModelSet>> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves `set` from now on.
    pub fn replace(&self, set: ModelSet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
    }

    /// The versions that failed to load.
    pub fn unavailable(&self) -> Vec<Unavailable> {
        self.unavailable
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the versions that failed to load (replacing the previous list).
    pub fn set_unavailable(&self, failed: Vec<Unavailable>) {
        *self.unavailable.write().unwrap_or_else(|p| p.into_inner()) = failed;
    }
}

/// The gRPC service. Models are filled in once loading finishes; until then calls get
/// UNAVAILABLE (and the health service says NOT_SERVING).
#[derive(Clone)]
pub struct InferenceService {
    models: Arc<ModelStore>,
    metrics: Arc<Metrics>,
}

impl InferenceService {
    /// A service that answers once `models` is set.
    pub fn new(models: Arc<ModelStore>, metrics: Arc<Metrics>) -> Self {
        Self { models, metrics }
    }

    /// Model `name` in `version` (its default when empty).
    fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, Status> {
        let models = self.loaded()?;
        if name.is_empty() {
            return Err(FieldError::new("model_name", "is required").to_status());
        }
        let served = models.get(name).ok_or_else(|| {
            ErrorKind::NotFound.status(format!(
                "no model named {:?} (see ListModels)",
                truncate(name, 64)
            ))
        })?;
        if version.is_empty() {
            return Ok(served.default.clone());
        }
        served.versions.get(version).cloned().ok_or_else(|| {
            let names: Vec<&str> = served.versions.keys().map(String::as_str).collect();
            ErrorKind::NotFound.status(format!(
                "model {name:?} has no version {:?}; it serves {}",
                truncate(version, 64),
                names.join(", ")
            ))
        })
    }

    fn loaded(&self) -> Result<Arc<ModelSet>, Status> {
        self.models
            .get()
            .ok_or_else(|| ErrorKind::Unavailable.status("models are still loading"))
    }

    /// Tokenises (on the blocking pool unless quick) or copies the validated inputs, queues
    /// them, and waits for every prediction.
    /// Each prediction comes with the tokens its input held and whether they were cut at
    /// the model's window (text models; `(0, false)` otherwise). `refuse_truncation` refuses
    /// a prompt that would be cut, naming it in `field`'s terms.
    async fn run(
        &self,
        model: &ServedModel,
        sent: Sent,
        deadline: Option<Instant>,
        refuse_truncation: Option<fn(usize) -> String>,
    ) -> Result<Vec<(Prediction, u32, bool)>, Status> {
        let mut counts = Vec::new();
        let inputs = match (sent, &model.tokenizer) {
            (Sent::Prompts(prompts), Some(tokenizer)) => {
                // Up to tens of microseconds' work runs here; more goes to the blocking
                // pool, off the threads that serve every connection.
                let tokenized = match tokenizer.tokenize_in_place(&prompts) {
                    Some(done) => done,
                    None => {
                        let tokenizer = tokenizer.clone();
                        tokio::task::spawn_blocking(move || tokenizer.tokenize_all(&prompts))
                            .await
                            .map_err(|e| internal("tokenizer task", &e))?
                    }
                }
                .map_err(|e| internal("tokenizing", &e))?;
                if let Some(field) = refuse_truncation
                    && let Some(i) = tokenized.iter().position(|(_, cut)| *cut)
                {
                    return Err(FieldError::new(
                        field(i),
                        format!(
                            "is longer than the model's window of {} tokens (and truncation \
                             was refused)",
                            model.info.max_tokens
                        ),
                    )
                    .to_status());
                }
                tokenized
                    .into_iter()
                    .map(|(ids, cut)| {
                        counts.push((ids.len() as u32, cut));
                        ModelInput::Tokens(ids)
                    })
                    .collect()
            }
            (Sent::Rows(rows), None) => rows.into_iter().map(ModelInput::Features).collect(),
            (Sent::Tensors(items), None) => items.into_iter().map(ModelInput::Tensors).collect(),
            _ => return Err(ErrorKind::Internal.status("inputs of the wrong kind")),
        };
        let receivers = model
            .batcher
            .submit(inputs, deadline)
            .map_err(|e| batch_status(e, signature(&model.info)))?;
        let mut predictions = Vec::with_capacity(receivers.len());
        for (i, rx) in receivers.into_iter().enumerate() {
            let prediction = rx
                .await
                .map_err(|_| ErrorKind::Unavailable.status("the model is shutting down"))?
                .map_err(|e| batch_status(e, signature(&model.info)))?;
            let (tokens, cut) = counts.get(i).copied().unwrap_or((0, false));
            predictions.push((prediction, tokens, cut));
        }
        Ok(predictions)
    }

    /// Counts an answer of `model` by the version that computed it (`""` for a call no
    /// version answered) and gRPC code.
    fn record<T>(&self, model: &str, result: &Result<T, Status>, version: impl Fn(&T) -> &str) {
        let known = self.models.get().is_some_and(|m| m.contains_key(model));
        let model = if known { model } else { "_unknown" };
        let (version, code) = match result {
            Ok(answer) => (version(answer), Code::Ok),
            Err(status) => ("", status.code()),
        };
        self.metrics
            .requests
            .with_label_values(&[model, version, code_name(code)])
            .inc();
    }

    async fn predict_one(
        &self,
        req: PredictRequest,
        request_id: String,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<PredictResponse, Status> {
        let model = self.model(&req.model_name, &req.model_version)?;
        let wanted = requested_outputs(&model.info, &req.outputs)?;
        let sent = if req.inputs.is_empty() {
            signature(&model.info)
                .check(Input::from_proto(&req.prompt, &req.features))
                .map_err(|e| FieldError::new(e.path(), e.message).to_status())?;
            match model.tokenizer {
                Some(_) => Sent::Prompts(vec![req.prompt]),
                None => Sent::Rows(vec![req.features]),
            }
        } else {
            if !req.prompt.is_empty() || !req.features.is_empty() {
                return Err(FieldError::new(
                    "inputs",
                    "send `inputs` or `prompt` / `features`, not both",
                )
                .to_status());
            }
            let sent = tensor_inputs(&model, req.inputs)?;
            if sent.len() != 1 {
                return Err(FieldError::new(
                    "inputs",
                    format!(
                        "Predict takes one input (first dimension 1), got {}; use PredictBatch",
                        sent.len()
                    ),
                )
                .to_status());
            }
            sent
        };
        let field: fn(usize) -> String = |_| "prompt".to_string();
        let refuse = req.refuse_truncation.then_some(field);
        let mut predictions = self.run(&model, sent, deadline, refuse).await?;
        let prediction = predictions
            .pop()
            .ok_or_else(|| ErrorKind::Internal.status("no prediction"))?;
        let mut answer = to_response(&model.info, prediction, &wanted, request_id);
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
        let model = self.model(&req.model_name, &req.model_version)?;
        let wanted = requested_outputs(&model.info, &req.outputs)?;
        let sent = if req.inputs.is_empty() {
            seed_inputs(&model, req.prompts, req.rows)?
        } else {
            if !req.prompts.is_empty() || !req.rows.is_empty() {
                return Err(FieldError::new(
                    "inputs",
                    "send `inputs` or `prompts` / `rows`, not both",
                )
                .to_status());
            }
            tensor_inputs(&model, req.inputs)?
        };
        let field: fn(usize) -> String = |i| format!("prompts[{i}]");
        let refuse = req.refuse_truncation.then_some(field);
        let predictions = self.run(&model, sent, deadline, refuse).await?;
        let results = predictions
            .into_iter()
            .map(|p| to_response(&model.info, p, &wanted, request_id.clone()))
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

/// A call's inputs, checked, as the model takes them.
enum Sent {
    /// Texts of a text model.
    Prompts(Vec<String>),
    /// Feature rows of a tabular model.
    Rows(Vec<Vec<f32>>),
    /// Named tensors: per input, one tensor per input of the signature, in its order.
    Tensors(Vec<Vec<Tensor>>),
}

impl Sent {
    fn len(&self) -> usize {
        match self {
            Self::Prompts(p) => p.len(),
            Self::Rows(r) => r.len(),
            Self::Tensors(t) => t.len(),
        }
    }
}

/// The seed's batch fields, `prompts` for text models and `rows` for tabular ones, checked
/// with the one check single inputs and the gateway run too.
fn seed_inputs(
    model: &ServedModel,
    prompts: Vec<String>,
    rows: Vec<FeatureRow>,
) -> Result<Sent, Status> {
    let signature = signature(&model.info);
    let (wanted, unwanted, sent, stray) = match signature.field() {
        InputField::Prompt => ("prompts", "rows", prompts.len(), rows.len()),
        InputField::Features => ("rows", "prompts", rows.len(), prompts.len()),
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
    let inputs = prompts
        .iter()
        .map(|p| Input::from_proto(p, &[]))
        .chain(rows.iter().map(|r| Input::from_proto("", &r.features)));
    let errors: Vec<FieldError> = signature
        .check_all(inputs)
        .iter()
        .map(|(i, e)| batch_field(*i, e))
        .collect();
    if !errors.is_empty() {
        return Err(invalid_argument(&errors));
    }
    Ok(match signature.field() {
        InputField::Prompt => Sent::Prompts(prompts),
        InputField::Features => Sent::Rows(rows.into_iter().map(|r| r.features).collect()),
    })
}

/// Named tensors checked against the model's inputs and split into its inputs; a text
/// model's `prompt` tensor gives its texts.
fn tensor_inputs(model: &ServedModel, tensors: Vec<Tensor>) -> Result<Sent, Status> {
    let specs = &model.info.inputs;
    let n = tensor::check_inputs(specs, &tensors).map_err(|errors| {
        let fields: Vec<FieldError> = errors
            .iter()
            .map(|e| {
                let member = match (e.member, e.name.as_str()) {
                    (Member::Contents, _) => {
                        let bytes = tensors
                            .get(e.tensor.unwrap_or(usize::MAX))
                            .is_some_and(|t| t.datatype == DataType::Bytes.name());
                        if bytes {
                            "bytes_contents"
                        } else {
                            "raw_contents"
                        }
                    }
                    (member, _) => member.name(),
                };
                let field = match (e.tensor, e.element) {
                    (None, _) => "inputs".to_string(),
                    (Some(k), Some(j)) => format!("inputs[{k}].{member}[{j}]"),
                    (Some(k), None) => format!("inputs[{k}].{member}"),
                };
                FieldError::new(field, e.message.clone())
            })
            .collect();
        invalid_argument(&fields)
    })?;
    let ordered = tensor::in_order(specs, tensors);
    if model.tokenizer.is_some() {
        let prompts = ordered
            .into_iter()
            .flat_map(|t| t.bytes_contents)
            .map(|b| String::from_utf8(b).unwrap_or_default())
            .collect();
        return seed_inputs(model, prompts, Vec::new());
    }
    let mut columns: Vec<_> = ordered
        .into_iter()
        .map(|t| tensor::split(t, n).into_iter())
        .collect();
    let items = (0..n)
        .map(|_| columns.iter_mut().filter_map(Iterator::next).collect())
        .collect();
    Ok(Sent::Tensors(items))
}

/// The named outputs a call asks for, each one the model has.
fn requested_outputs(info: &ModelInfo, names: &[String]) -> Result<Vec<String>, Status> {
    let errors: Vec<FieldError> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| !info.outputs.iter().any(|o| &o.name == *n))
        .map(|(i, _)| {
            let offered: Vec<&str> = info.outputs.iter().map(|o| o.name.as_str()).collect();
            FieldError::new(
                format!("outputs[{i}]"),
                if offered.is_empty() {
                    "this model has no named outputs".to_string()
                } else {
                    format!("this model's named outputs are {}", offered.join(", "))
                },
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(names.to_vec())
    } else {
        Err(invalid_argument(&errors))
    }
}

#[tonic::async_trait]
impl ModelInference for InferenceService {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        crate::tls::require(&request, Call::Predict)?;
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata(), started);
        let request_id = request_id(request.metadata(), &request.get_ref().request_id);
        let req = request.into_inner();
        let model = req.model_name.clone();
        let result = self
            .predict_one(req, request_id.clone(), deadline, started)
            .await;
        self.record(&model, &result, |r| &r.model_version);
        respond(result, &request_id)
    }

    async fn predict_batch(
        &self,
        request: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        crate::tls::require(&request, Call::Predict)?;
        let started = Instant::now();
        let deadline = grpc_deadline(request.metadata(), started);
        let request_id = request_id(request.metadata(), &request.get_ref().request_id);
        let req = request.into_inner();
        let model = req.model_name.clone();
        let result = self
            .predict_many(req, request_id.clone(), deadline, started)
            .await;
        self.record(&model, &result, |r| &r.model_version);
        respond(result, &request_id)
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        crate::tls::require(&request, Call::ListModels)?;
        self.loaded()?;
        Ok(Response::new(ListModelsResponse {
            models: index(&self.models, ""),
        }))
    }
}

/// Every served version (state `ready`: `""` for ListModels, `"READY"` for the admin
/// index) and every version that failed to load (`UNAVAILABLE`, with the loader's message).
pub fn index(store: &ModelStore, ready: &str) -> Vec<ModelInfo> {
    let Some(models) = store.get() else {
        return Vec::new();
    };
    // The default mark and the split are the repository's now, not the load's.
    let mut listed: Vec<ModelInfo> = models
        .values()
        .flat_map(|m| {
            m.versions.values().map(|v| ModelInfo {
                state: ready.to_string(),
                default_version: Arc::ptr_eq(v, &m.default),
                traffic_weight: m.weights.get(&v.info.version).copied().unwrap_or(0),
                ..v.info.clone()
            })
        })
        .collect();
    // Versions that failed to load, with the loader's message; never routed to.
    listed.extend(store.unavailable().into_iter().map(|u| ModelInfo {
        name: u.name,
        version: u.version,
        state: "UNAVAILABLE".into(),
        reason: u.reason,
        ..Default::default()
    }));
    listed
}

/// A prediction as an answer: label, probability and scores for a classifier; values
/// (and an empty label) for a regressor.
fn to_response(
    info: &ModelInfo,
    (prediction, tokens, truncated): (Prediction, u32, bool),
    wanted: &[String],
    request_id: String,
) -> PredictResponse {
    let mut answer = PredictResponse {
        latency_ms: millis(prediction.queue + prediction.compute),
        request_id,
        model_version: info.version.clone(),
        queue_ms: millis(prediction.queue),
        compute_ms: millis(prediction.compute),
        batch_size: prediction.batch_size as u32,
        model_name: info.name.clone(),
        tokens,
        truncated,
        ..Default::default()
    };
    let Output { row, tensors } = prediction.output;
    answer.outputs = wanted
        .iter()
        .filter_map(|name| tensors.iter().find(|t| &t.name == name).cloned())
        .collect();
    if matches!(info.task(), ModelTask::Regression | ModelTask::Embedding) {
        answer.values = row;
        return answer;
    }
    let (best, probability) = argmax(&row);
    answer.probability = probability;
    answer.label = info.labels.get(best).cloned().unwrap_or_default();
    answer.scores = info
        .labels
        .iter()
        .zip(&row)
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
        BatchError::Closed | BatchError::Stuck { .. } => {
            ErrorKind::Unavailable.status(e.to_string())
        }
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
