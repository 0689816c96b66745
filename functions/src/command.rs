//! What a caller asks of a model, in no protocol's terms: every protocol decodes into a
//! [`Command`] and names the [`Place`]s of its problems in its own words; the one path in
//! [`crate::infer`] authorizes, validates, charges and calls the worker with it.

use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask, Tensor, TensorInfo};
use inferencehub_proto::tensor::{self, DataType, Member, TensorError};
use inferencehub_proto::{InputError, InputSignature};
use serde_json::{Map, Value};

/// One request for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The model's name.
    pub model: String,
    /// The version asked for, if one was named.
    pub version: Option<String>,
    /// The inputs.
    pub inputs: Inputs,
    /// The outputs asked for by name; `None` for every output.
    pub outputs: Option<Vec<String>>,
    /// Refuse texts longer than the model's window instead of truncating them.
    pub refuse_truncation: bool,
}

/// A command's inputs as the protocol carried them.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// One entry per input with the fields the caller sent.
    Fields(Vec<Sent>),
    /// Typed named tensors whose first dimension counts the inputs.
    Tensors(Vec<Tensor>),
    /// One entry per input: each of the model's inputs by name, a nested JSON array (or a
    /// number, boolean or string) typed by the model's signature.
    Named(Vec<Map<String, Value>>),
}

/// One input: what was sent of `prompt` and `features` (`null` counts as absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sent {
    /// Text.
    pub prompt: Option<String>,
    /// Features.
    pub features: Option<Vec<f32>>,
}

impl Sent {
    /// The input as the signature checks see it.
    pub fn as_input(&self) -> inferencehub_proto::Input<'_> {
        inferencehub_proto::Input {
            prompt: self.prompt.as_deref(),
            features: self.features.as_deref(),
        }
    }
}

/// A command's inputs bound to its model: the seed's fields (texts or feature rows), or
/// tensors for the model's named inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// `prompt` or `features` per input.
    Fields(Vec<Sent>),
    /// One tensor per named input, the first dimension counting the inputs.
    Tensors(Vec<Tensor>),
}

impl Bound {
    /// The number of inputs (what a request costs).
    pub fn len(&self) -> usize {
        match self {
            Self::Fields(sent) => sent.len(),
            Self::Tensors(t) => t
                .first()
                .and_then(|t| t.shape.first())
                .map_or(0, |&n| usize::try_from(n).unwrap_or(0)),
        }
    }

    /// Whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where in a request a problem is. A protocol names each place in its own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The model's name.
    Model,
    /// The inputs as a whole (how many there are).
    Batch,
    /// Input `index`: the field (and element) the check names.
    Input(usize, InputError),
    /// A tensor: its place in the request (`None`: an input missing from the set), name,
    /// member, and the element and input of the batch at fault (the message is the
    /// [`Invalid`]'s).
    Tensor(TensorError),
    /// The tensors as a whole (how many, which).
    Tensors,
    /// Requested output `index`.
    Output(usize),
    /// A place the protocol named itself while decoding (`body`, `features[2]`).
    Named(String),
}

impl Place {
    /// `member` of tensor `index` (named `name`).
    pub fn tensor(index: usize, name: &str, member: Member) -> Self {
        Self::Tensor(TensorError::at(index, name, member))
    }
}

/// A problem at a place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where.
    pub place: Place,
    /// What is wrong, in words a caller can act on.
    pub message: String,
}

impl Invalid {
    /// A problem at `place`.
    pub fn new(place: Place, message: impl Into<String>) -> Self {
        Self {
            place,
            message: message.into(),
        }
    }
}

impl From<TensorError> for Invalid {
    fn from(e: TensorError) -> Self {
        let message = e.message.clone();
        Self::new(Place::Tensor(e), message)
    }
}

/// The name of `model`'s first input: its ONNX graph's, else `prompt` / `features`.
pub fn input_name(model: &ModelInfo) -> String {
    match &model.input {
        Some(t) if !t.name.is_empty() => t.name.clone(),
        _ if model.kind() == ModelKind::Text => "prompt".into(),
        _ => "features".into(),
    }
}

/// Every input `model` takes by name, with its element type and shape: the signature's
/// `inputs`, or for a catalogue entry without them its one input.
pub fn input_specs(model: &ModelInfo) -> Vec<TensorInfo> {
    if !model.inputs.is_empty() {
        return model.inputs.clone();
    }
    vec![TensorInfo {
        name: input_name(model),
        datatype: match model.kind() {
            ModelKind::Tabular => "FP32",
            _ => "BYTES",
        }
        .into(),
        shape: input_shape(model),
    }]
}

/// The names the gateway's own outputs use.
const OWN_OUTPUTS: [&str; 5] = ["label", "probability", "scores", "values", "embedding"];

/// One output a model answers with: name, element type and shape (`-1`: the inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Whether the model returns it by name (else the gateway builds it from the answer).
    pub named: bool,
}

/// What `model` answers: a classifier `label` (`BYTES [N]`), `probability` (`FP32 [N]`) and
/// `scores` (`FP32 [N, L]`, one column per label in the model's label order); a regressor
/// `values` (`FP32 [N, V]`); an embedding model `embedding` (`FP32 [N, D]`); then the
/// model's named outputs, except any that share one of those names (they mean the same).
pub fn outputs(model: &ModelInfo) -> Vec<OutputSpec> {
    let spec = |name: &str, datatype: &str, shape| OutputSpec {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        named: false,
    };
    let mut out = if model.task() == ModelTask::Regression {
        vec![spec(
            "values",
            "FP32",
            vec![-1, model.value_count.max(1) as i64],
        )]
    } else if model.task() == ModelTask::Embedding {
        vec![spec(
            "embedding",
            "FP32",
            vec![-1, model.value_count.max(1) as i64],
        )]
    } else {
        vec![
            spec("label", "BYTES", vec![-1]),
            spec("probability", "FP32", vec![-1]),
            spec("scores", "FP32", vec![-1, model.labels.len() as i64]),
        ]
    };
    out.extend(
        model
            .outputs
            .iter()
            .filter(|o| !OWN_OUTPUTS.contains(&o.name.as_str()))
            .map(|o| OutputSpec {
                name: o.name.clone(),
                datatype: o.datatype.clone(),
                shape: o.shape.clone(),
                named: true,
            }),
    );
    out
}

/// The named outputs to ask the worker for: those requested, or all when `requested` is
/// `None`.
pub fn named_outputs(requested: Option<&[String]>, model: &ModelInfo) -> Vec<String> {
    outputs(model)
        .into_iter()
        .filter(|o| o.named && requested.is_none_or(|r| r.contains(&o.name)))
        .map(|o| o.name)
        .collect()
}

/// The shape of `model`'s one input tensor: `[-1]` for texts, `[-1, F]` for features, or
/// the shape the model declares when its input has more dimensions (an image:
/// `[-1, 1, 8, 8]`), its elements being the features in row-major order.
pub fn input_shape(model: &ModelInfo) -> Vec<i64> {
    match model.kind() {
        ModelKind::Tabular => model
            .input
            .as_ref()
            .map(|t| t.shape.clone())
            .filter(|s| {
                s.len() > 2
                    && s[1..].iter().all(|&d| d > 0)
                    && s[1..].iter().product::<i64>() == i64::from(model.feature_count)
            })
            .unwrap_or_else(|| vec![-1, i64::from(model.feature_count)]),
        _ => vec![-1],
    }
}

impl Inputs {
    /// The inputs for `model`: a text model's `prompt` tensor as its texts; an `FP32`
    /// tensor for a model's one numeric input as feature rows (converted by the worker as
    /// `features` are); other tensors as sent, and v1's named values typed by the
    /// signature. What does not fit is named.
    pub fn bind(self, model: &ModelInfo) -> Result<Bound, Vec<Invalid>> {
        match self {
            Self::Fields(sent) => Ok(Bound::Fields(sent)),
            Self::Named(items) => named(items, model).map(Bound::Tensors),
            Self::Tensors(tensors) if model.kind() == ModelKind::Text => {
                prompts(tensors, model).map(Bound::Fields)
            }
            Self::Tensors(tensors) => match features(&tensors, model) {
                Some(rows) => rows.map(Bound::Fields),
                None => Ok(Bound::Tensors(tensors)),
            },
        }
    }
}

/// A text model's one `BYTES [N]` tensor as its texts.
fn prompts(tensors: Vec<Tensor>, model: &ModelInfo) -> Result<Vec<Sent>, Vec<Invalid>> {
    let name = input_name(model);
    let err = |place, message: String| vec![Invalid::new(place, message)];
    let [t] = <[Tensor; 1]>::try_from(tensors).map_err(|sent| {
        err(
            Place::Tensors,
            format!(
                "this model takes exactly one input, {name:?}; got {}",
                sent.len()
            ),
        )
    })?;
    if t.name != name {
        return Err(err(
            Place::tensor(0, &t.name, Member::Name),
            format!("this model's input is {name:?}"),
        ));
    }
    if t.datatype != DataType::Bytes.name() {
        return Err(err(
            Place::tensor(0, &t.name, Member::Datatype),
            "this model takes BYTES".into(),
        ));
    }
    if t.shape.len() != 1 {
        return Err(err(
            Place::tensor(0, &t.name, Member::Shape),
            "must be [N] for this model".into(),
        ));
    }
    t.bytes_contents
        .into_iter()
        .enumerate()
        .map(|(e, b)| {
            String::from_utf8(b)
                .map(|p| Sent {
                    prompt: Some(p),
                    features: None,
                })
                .map_err(|_| {
                    let place = TensorError {
                        element: Some(e),
                        row: Some(e),
                        ..TensorError::at(0, &name, Member::Contents)
                    };
                    err(Place::Tensor(place), "must be UTF-8 text".into())
                })
        })
        .collect()
}

/// One `FP32` tensor for a model whose one numeric input takes `features`: its rows (the
/// shape checked against the declared one). `None` when the tensors are not that.
fn features(tensors: &[Tensor], model: &ModelInfo) -> Option<Result<Vec<Sent>, Vec<Invalid>>> {
    let count = model.feature_count as usize;
    let [t] = tensors else { return None };
    if count == 0 || model.inputs.len() > 1 || t.datatype != DataType::F32.name() {
        return None;
    }
    let name = input_name(model);
    if t.name != name {
        return Some(Err(vec![Invalid::new(
            Place::tensor(0, &t.name, Member::Name),
            format!("this model's input is {name:?}"),
        )]));
    }
    let declared = input_shape(model);
    let fits = tensor::shape_fits(&declared, &t.shape)
        && tensor::element_count(&t.shape)
            .is_some_and(|c| c.checked_mul(4) == Some(t.raw_contents.len()));
    if !fits {
        return Some(Err(vec![Invalid::new(
            Place::tensor(0, &t.name, Member::Shape),
            format!(
                "must be {} for this model, with 4 bytes per element",
                tensor::shape_text(&declared)
            ),
        )]));
    }
    let values: Vec<f32> = t
        .raw_contents
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(Ok(values
        .chunks(count)
        .map(|row| Sent {
            prompt: None,
            features: Some(row.to_vec()),
        })
        .collect()))
}

/// v1's named values, per input, as one tensor per named input (every input of a request
/// must have the same shape for each).
fn named(items: Vec<Map<String, Value>>, model: &ModelInfo) -> Result<Vec<Tensor>, Vec<Invalid>> {
    let specs = input_specs(model);
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut errors = Vec::new();
    let mut columns: Vec<Option<Tensor>> = vec![None; specs.len()];
    let problem = |row: usize, name: &str, member, message: String| {
        let place = TensorError {
            tensor: None,
            row: Some(row),
            ..TensorError::at(0, name, member)
        };
        Invalid::new(Place::Tensor(place), message)
    };
    for (row, item) in items.iter().enumerate() {
        for key in item.keys().filter(|k| !names.contains(&k.as_str())) {
            errors.push(problem(
                row,
                key,
                Member::Name,
                format!("this model's inputs are {}", names.join(", ")),
            ));
        }
        for (s, spec) in specs.iter().enumerate() {
            let Some(value) = item.get(&spec.name) else {
                errors.push(problem(
                    row,
                    &spec.name,
                    Member::Name,
                    format!(
                        "is missing: this model takes {} {}",
                        spec.datatype,
                        tensor::shape_text(&spec.shape)
                    ),
                ));
                continue;
            };
            match json_item(spec, value) {
                Err((member, message)) => errors.push(problem(row, &spec.name, member, message)),
                Ok(t) => match &mut columns[s] {
                    None => columns[s] = Some(t),
                    Some(c) if c.shape[1..] != t.shape[1..] => errors.push(problem(
                        row,
                        &spec.name,
                        Member::Shape,
                        format!(
                            "has shape {:?}, the first input's has {:?}: the inputs of one \
                             request share their shapes",
                            &t.shape[1..],
                            &c.shape[1..]
                        ),
                    )),
                    Some(c) => {
                        c.shape[0] += 1;
                        c.raw_contents.extend(t.raw_contents);
                        c.bytes_contents.extend(t.bytes_contents);
                    }
                },
            }
        }
    }
    if errors.is_empty() {
        Ok(columns.into_iter().flatten().collect())
    } else {
        Err(errors)
    }
}

/// The dimensions of a nested JSON array (`[]` for a scalar); `None` when ragged.
fn nested_shape(value: &Value) -> Option<Vec<usize>> {
    match value {
        Value::Array(items) => {
            let inner = match items.first() {
                Some(first) => nested_shape(first)?,
                None => Vec::new(),
            };
            if items
                .iter()
                .skip(1)
                .any(|v| nested_shape(v).as_ref() != Some(&inner))
            {
                return None;
            }
            Some(std::iter::once(items.len()).chain(inner).collect())
        }
        _ => Some(Vec::new()),
    }
}

/// Flattens nested JSON arrays into their leaves, row-major.
pub fn leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        other => out.push(other),
    }
}

/// One input's value for `spec` as a tensor of shape `[1, ...]`: a nested array of the
/// input's shape, or (where every dimension is fixed) any nesting of as many elements.
fn json_item(spec: &TensorInfo, value: &Value) -> Result<Tensor, (Member, String)> {
    let datatype = DataType::parse(&spec.datatype)
        .ok_or_else(|| (Member::Datatype, format!("{} is not served", spec.datatype)))?;
    let want = || {
        format!(
            "must be an array of shape {} ({} per input)",
            tensor::shape_text(&spec.shape)
                .replacen("N, ", "", 1)
                .replacen("[N]", "[]", 1),
            spec.datatype
        )
    };
    let dims = nested_shape(value).ok_or_else(|| (Member::Shape, want()))?;
    let item = &spec.shape[1..];
    let mut values = Vec::new();
    leaves(value, &mut values);
    let fits =
        dims.len() == item.len() && dims.iter().zip(item).all(|(&d, &s)| s < 0 || d as i64 == s);
    let fixed: Option<usize> = item
        .iter()
        .try_fold(1usize, |n, &d| usize::try_from(d).ok().map(|d| n * d));
    let shape: Vec<i64> = if fits {
        std::iter::once(1)
            .chain(dims.iter().map(|&d| d as i64))
            .collect()
    } else if fixed == Some(values.len()) {
        std::iter::once(1).chain(item.iter().copied()).collect()
    } else {
        return Err((Member::Shape, want()));
    };
    let (raw, bytes) = json_elements(datatype, &values)
        .map_err(|(e, message)| (Member::Contents, format!("element {e}: {message}")))?;
    Ok(Tensor {
        name: spec.name.clone(),
        datatype: datatype.name().into(),
        shape,
        raw_contents: raw,
        bytes_contents: bytes,
    })
}

/// A tensor's elements: raw little-endian numbers, and `BYTES` strings.
pub type Elements = (Vec<u8>, Vec<Vec<u8>>);

/// JSON elements as `datatype`'s raw little-endian bytes (or `BYTES` strings), each
/// checked to be that type and within its range; a failure names the element.
pub fn json_elements(datatype: DataType, values: &[&Value]) -> Result<Elements, (usize, String)> {
    let mut raw = Vec::with_capacity(values.len() * datatype.width().unwrap_or(0));
    let mut bytes = Vec::new();
    let name = datatype.name();
    for (e, v) in values.iter().enumerate() {
        let int = || {
            v.as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
                .ok_or((e, format!("must be an integer ({name})")))
        };
        let ranged = |lo: i128, hi: i128| {
            let x = int()?;
            if (lo..=hi).contains(&x) {
                Ok(x)
            } else {
                Err((e, format!("is outside the {name} range {lo}..={hi}")))
            }
        };
        let float = || v.as_f64().ok_or((e, format!("must be a number ({name})")));
        match datatype {
            DataType::Bool => raw.push(u8::from(
                v.as_bool()
                    .ok_or((e, "must be true or false (BOOL)".to_string()))?,
            )),
            DataType::U8 => raw.push(ranged(0, u8::MAX.into())? as u8),
            DataType::I8 => {
                raw.extend((ranged(i8::MIN.into(), i8::MAX.into())? as i8).to_le_bytes())
            }
            DataType::U16 => raw.extend((ranged(0, u16::MAX.into())? as u16).to_le_bytes()),
            DataType::I16 => {
                raw.extend((ranged(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes())
            }
            DataType::U32 => raw.extend((ranged(0, u32::MAX.into())? as u32).to_le_bytes()),
            DataType::I32 => {
                raw.extend((ranged(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes())
            }
            DataType::U64 => raw.extend((ranged(0, u64::MAX.into())? as u64).to_le_bytes()),
            DataType::I64 => {
                raw.extend((ranged(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes())
            }
            DataType::F16 => {
                let x = half::f16::from_f64(float()?);
                if !x.is_finite() {
                    return Err((e, "is outside the FP16 range (±65504)".into()));
                }
                raw.extend(x.to_le_bytes());
            }
            DataType::F32 => {
                let x = float()? as f32;
                if !x.is_finite() {
                    return Err((e, "is outside the FP32 range".into()));
                }
                raw.extend(x.to_le_bytes());
            }
            DataType::F64 => raw.extend(float()?.to_le_bytes()),
            DataType::Bytes => bytes.push(
                v.as_str()
                    .ok_or((e, "must be a string (BYTES)".to_string()))?
                    .as_bytes()
                    .to_vec(),
            ),
        }
    }
    Ok((raw, bytes))
}

/// A tensor's elements as JSON values: numbers, booleans, or strings (`BYTES` that are
/// not UTF-8 are written lossily).
pub fn json_values(t: &Tensor) -> Vec<Value> {
    let raw = &t.raw_contents;
    macro_rules! numbers {
        ($ty:ty, $w:literal) => {
            raw.chunks_exact($w)
                .map(|b| {
                    let mut a = [0u8; $w];
                    a.copy_from_slice(b);
                    Value::from(<$ty>::from_le_bytes(a))
                })
                .collect()
        };
    }
    match DataType::parse(&t.datatype) {
        Some(DataType::Bool) => raw.iter().map(|&b| Value::Bool(b != 0)).collect(),
        Some(DataType::U8) => raw.iter().map(|&b| Value::from(b)).collect(),
        Some(DataType::I8) => raw.iter().map(|&b| Value::from(b as i8)).collect(),
        Some(DataType::U16) => numbers!(u16, 2),
        Some(DataType::I16) => numbers!(i16, 2),
        Some(DataType::U32) => numbers!(u32, 4),
        Some(DataType::I32) => numbers!(i32, 4),
        Some(DataType::U64) => numbers!(u64, 8),
        Some(DataType::I64) => numbers!(i64, 8),
        Some(DataType::F16) => raw
            .chunks_exact(2)
            .map(|b| Value::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect(),
        Some(DataType::F32) => numbers!(f32, 4),
        Some(DataType::F64) => numbers!(f64, 8),
        Some(DataType::Bytes) | None => t
            .bytes_contents
            .iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect(),
    }
}

/// Checks bound inputs: the seed's fields against `signature`, tensors against the
/// model's named inputs; and `max` inputs per request.
pub fn validate(
    bound: &Bound,
    model: &ModelInfo,
    signature: InputSignature,
    max: usize,
) -> Result<(), Vec<Invalid>> {
    let n = match bound {
        Bound::Fields(inputs) => inputs.len(),
        Bound::Tensors(tensors) => tensor::check_inputs(&input_specs(model), tensors)
            .map_err(|errors| errors.into_iter().map(Invalid::from).collect::<Vec<_>>())?,
    };
    if n == 0 || n > max {
        return Err(vec![Invalid::new(
            Place::Batch,
            format!("between 1 and {max} inputs per request, got {n}"),
        )]);
    }
    let Bound::Fields(inputs) = bound else {
        return Ok(());
    };
    let errors: Vec<Invalid> = signature
        .check_all(inputs.iter().map(Sent::as_input))
        .into_iter()
        .map(|(i, e)| {
            let message = e.message.clone();
            Invalid::new(Place::Input(i, e), message)
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Bytes an answer's JSON may take per element of an output of `datatype` (the longest
/// text of one value and its separator); BYTES elements other than labels are counted at
/// 64.
fn json_bytes_per_element(datatype: &str) -> u64 {
    match datatype {
        "BOOL" => 6,
        "INT8" | "UINT8" => 5,
        "INT16" | "UINT16" => 7,
        "FP16" => 12,
        "INT32" | "UINT32" => 12,
        "FP32" => 16,
        "INT64" | "UINT64" => 21,
        "FP64" => 25,
        _ => 64,
    }
}

/// What the answer to `n` inputs of `model` takes at most, in bytes of JSON: the outputs
/// it carries (the gateway's own and the named ones asked for, or all) from their declared
/// shapes, and a fixed part per input (ids, version, latency). A dimension the model
/// leaves dynamic beyond the first counts once; the worker's message limit bounds those.
pub fn answer_bytes(model: &ModelInfo, requested: Option<&[String]>, n: usize) -> u64 {
    const PER_INPUT: u64 = 256;
    let longest_label = model.labels.iter().map(String::len).max().unwrap_or(0) as u64;
    let per_input: u64 = outputs(model)
        .iter()
        .filter(|o| !o.named || requested.is_none_or(|r| r.contains(&o.name)))
        .map(|o| {
            let elements: u64 = o
                .shape
                .iter()
                .skip(1)
                .map(|&d| u64::try_from(d).unwrap_or(1).max(1))
                .product();
            let each = if o.name == "label" && !o.named {
                longest_label + 3
            } else if o.name == "scores" && !o.named {
                json_bytes_per_element(&o.datatype) + longest_label + 24
            } else {
                json_bytes_per_element(&o.datatype)
            };
            elements.saturating_mul(each)
        })
        .fold(PER_INPUT, u64::saturating_add);
    per_input.saturating_mul(n as u64)
}

/// Refuses a request whose answer would pass `max` bytes (see [`answer_bytes`]).
pub fn check_answer_size(
    model: &ModelInfo,
    requested: Option<&[String]>,
    n: usize,
    max: usize,
) -> Result<(), Vec<Invalid>> {
    let bytes = answer_bytes(model, requested, n);
    if bytes <= max as u64 {
        return Ok(());
    }
    let per_input = bytes / n.max(1) as u64;
    Err(vec![Invalid::new(
        if requested.is_some_and(|r| !r.is_empty()) {
            Place::Output(0)
        } else {
            Place::Batch
        },
        format!(
            "the answer would take up to {bytes} bytes ({per_input} per input), over the \
             limit of {max}: send at most {} inputs, or ask for fewer outputs",
            (max as u64 / per_input.max(1)).max(1)
        ),
    )])
}

/// Checks the requested output names against what `model` answers.
pub fn check_outputs(requested: Option<&[String]>, model: &ModelInfo) -> Result<(), Vec<Invalid>> {
    let available = outputs(model);
    let names: Vec<&str> = available.iter().map(|o| o.name.as_str()).collect();
    let mut errors: Vec<Invalid> = Vec::new();
    for (i, o) in requested.unwrap_or_default().iter().enumerate() {
        if !names.contains(&o.as_str()) {
            errors.push(Invalid::new(
                Place::Output(i),
                format!("this model's outputs are {}", names.join(", ")),
            ));
        } else if requested.unwrap_or_default()[..i].contains(o) {
            errors.push(Invalid::new(
                Place::Output(i),
                "is asked for more than once",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn iris() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 2,
            ..Default::default()
        }
    }

    fn fp32(name: &str, shape: &[i64], values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            raw_contents: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            bytes_contents: Vec::new(),
        }
    }

    /// The places of what binding and then validating `inputs` for `model` refuse.
    fn places(inputs: Inputs, model: &ModelInfo) -> Vec<Place> {
        let signature = InputSignature::from_info(model).unwrap();
        let refused = inputs
            .bind(model)
            .and_then(|bound| validate(&bound, model, signature, 64));
        refused.unwrap_err().into_iter().map(|e| e.place).collect()
    }

    fn member(place: &Place) -> (Option<usize>, Member) {
        match place {
            Place::Tensor(e) => (e.tensor, e.member),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_float_tensor_for_the_one_numeric_input_binds_as_feature_rows() {
        let rows = fp32("features", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let Bound::Fields(sent) = Inputs::Tensors(vec![rows.clone()]).bind(&iris()).unwrap() else {
            panic!("feature rows")
        };
        assert_eq!(sent[1].features.as_deref(), Some(&[3.0, 4.0][..]));
        let renamed = Tensor {
            name: "x".into(),
            ..rows.clone()
        };
        let wide = Tensor {
            shape: vec![1, 4],
            ..rows.clone()
        };
        let text = Tensor {
            datatype: "BYTES".into(),
            shape: vec![1, 2],
            raw_contents: Vec::new(),
            bytes_contents: vec![b"a".to_vec(), b"b".to_vec()],
            ..rows.clone()
        };
        for (inputs, want) in [
            (vec![renamed], (Some(0), Member::Name)),
            (vec![wide], (Some(0), Member::Shape)),
            (vec![text], (Some(0), Member::Datatype)),
            (vec![rows.clone(), rows], (Some(1), Member::Name)),
        ] {
            let got = places(Inputs::Tensors(inputs), &iris());
            assert_eq!(member(&got[0]), want);
        }
    }

    #[test]
    fn an_image_input_binds_by_its_declared_dimensions() {
        let image = TensorInfo {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![-1, 1, 8, 8],
        };
        let digits = ModelInfo {
            name: "digits".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 64,
            input: Some(image.clone()),
            inputs: vec![image],
            ..Default::default()
        };
        assert_eq!(input_shape(&digits), [-1, 1, 8, 8]);
        let values: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let images = fp32("image", &[2, 1, 8, 8], &values);
        let Bound::Fields(sent) = Inputs::Tensors(vec![images.clone()]).bind(&digits).unwrap()
        else {
            panic!("feature rows")
        };
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].features.as_ref().unwrap()[0], 64.0);
        // The same elements in another layout are refused, naming the shape wanted.
        for shape in [vec![2, 64], vec![2, 8, 8, 1], vec![2, 1, 64]] {
            let errors = Inputs::Tensors(vec![Tensor {
                shape,
                ..images.clone()
            }])
            .bind(&digits)
            .unwrap_err();
            assert_eq!(member(&errors[0].place), (Some(0), Member::Shape));
            assert!(
                errors[0].message.contains("[N, 1, 8, 8]"),
                "{}",
                errors[0].message
            );
        }
    }

    fn pipeline() -> ModelInfo {
        let spec = |name: &str, datatype: &str, shape: &[i64]| TensorInfo {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        };
        ModelInfo {
            name: "pipeline".into(),
            kind: ModelKind::Tabular as i32,
            inputs: vec![
                spec("age", "FP32", &[-1, 1]),
                spec("city", "BYTES", &[-1, 1]),
                spec("code", "INT8", &[-1, -1]),
            ],
            ..Default::default()
        }
    }

    fn items(values: Value) -> Inputs {
        let Value::Array(items) = values else {
            panic!()
        };
        Inputs::Named(
            items
                .into_iter()
                .map(|v| v.as_object().unwrap().clone())
                .collect(),
        )
    }

    #[test]
    fn named_values_are_typed_by_the_signature_and_joined_per_input() {
        let sent = items(json!([
            {"age": [30], "city": ["paris"], "code": [1, 2]},
            {"age": 41.5, "city": "oslo", "code": [-3, 4]},
        ]));
        let Bound::Tensors(tensors) = sent.bind(&pipeline()).unwrap() else {
            panic!("tensors")
        };
        assert_eq!(tensors[0], fp32("age", &[2, 1], &[30.0, 41.5]));
        assert_eq!(
            tensors[1].bytes_contents,
            [b"paris".to_vec(), b"oslo".to_vec()]
        );
        assert_eq!(tensors[2].shape, [2, 2]);
        assert_eq!(tensors[2].raw_contents, [1, 2, 0xfd, 4]);
        let bound = Bound::Tensors(tensors);
        assert_eq!(bound.len(), 2);
        let signature = InputSignature::from_info(&pipeline()).unwrap();
        assert!(validate(&bound, &pipeline(), signature, 2).is_ok());
        assert!(validate(&bound, &pipeline(), signature, 1).is_err());

        // Each problem names the input of the batch and the named value.
        for (values, row, name, member) in [
            (
                json!([{"age": 1, "city": "a", "code": [1]}, {"age": 1, "code": [1]}]),
                1,
                "city",
                Member::Name,
            ),
            (
                json!([{"age": "x", "city": "a", "code": [1]}]),
                0,
                "age",
                Member::Contents,
            ),
            (
                json!([{"age": [1, 2], "city": "a", "code": [1]}]),
                0,
                "age",
                Member::Shape,
            ),
            (
                json!([{"age": 1, "city": "a", "code": [300]}]),
                0,
                "code",
                Member::Contents,
            ),
            (
                json!([{"age": 1, "city": "a", "code": [1]}, {"age": 1, "city": "a", "code": [1, 2]}]),
                1,
                "code",
                Member::Shape,
            ),
            (
                json!([{"age": 1, "city": "a", "code": [[1], [2, 3]]}]),
                0,
                "code",
                Member::Shape,
            ),
            (
                json!([{"age": 1, "city": "a", "code": [1], "zip": 1}]),
                0,
                "zip",
                Member::Name,
            ),
        ] {
            let errors = items(values.clone()).bind(&pipeline()).unwrap_err();
            let Place::Tensor(e) = &errors[0].place else {
                panic!("{values}")
            };
            assert_eq!(
                (e.row, e.name.as_str(), e.member),
                (Some(row), name, member),
                "{values}"
            );
        }
    }

    #[test]
    fn elements_are_checked_against_their_type_and_range() {
        let check = |datatype, value: Value| {
            json_elements(datatype, &[&value]).map(|(raw, bytes)| (raw, bytes.len()))
        };
        assert_eq!(check(DataType::Bool, json!(true)), Ok((vec![1], 0)));
        assert!(check(DataType::Bool, json!(1)).is_err());
        assert!(check(DataType::U8, json!(256)).is_err());
        assert!(check(DataType::U8, json!(-1)).is_err());
        assert!(check(DataType::I32, json!(1.5)).is_err());
        assert_eq!(
            check(DataType::U64, json!(u64::MAX)),
            Ok((u64::MAX.to_le_bytes().to_vec(), 0))
        );
        assert!(check(DataType::F16, json!(70000.0)).is_err());
        assert_eq!(check(DataType::F16, json!(1.0)), Ok((vec![0x00, 0x3c], 0)));
        assert!(check(DataType::F32, json!(1e39)).is_err());
        assert!(check(DataType::Bytes, json!(3)).is_err());
        let t = Tensor {
            name: "h".into(),
            datatype: "FP16".into(),
            shape: vec![1],
            raw_contents: vec![0x00, 0x3c],
            bytes_contents: Vec::new(),
        };
        assert_eq!(json_values(&t), [json!(1.0)]);
    }

    #[test]
    fn validation_names_each_input_and_the_batch() {
        let signature = InputSignature::Tabular { feature_count: 2 };
        let sent = |f: &[f32]| Sent {
            features: Some(f.to_vec()),
            prompt: None,
        };
        let fields = |s: Vec<Sent>| Bound::Fields(s);
        assert!(validate(&fields(vec![sent(&[1.0, 2.0])]), &iris(), signature, 2).is_ok());
        let errors = validate(
            &fields(vec![sent(&[1.0, 2.0]), sent(&[1.0])]),
            &iris(),
            signature,
            2,
        )
        .unwrap_err();
        assert!(matches!(errors[0].place, Place::Input(1, _)));
        let errors = validate(&fields(vec![]), &iris(), signature, 2).unwrap_err();
        assert_eq!(errors[0].place, Place::Batch);
        let three = vec![sent(&[1.0, 2.0]); 3];
        assert_eq!(
            validate(&fields(three), &iris(), signature, 2).unwrap_err()[0].place,
            Place::Batch
        );
    }

    #[test]
    fn named_outputs_follow_the_gateways_own_and_never_shadow_them() {
        let spec = |name: &str| TensorInfo {
            name: name.into(),
            datatype: "INT64".into(),
            shape: vec![-1],
        };
        let model = ModelInfo {
            labels: vec!["a".into(), "b".into()],
            outputs: vec![spec("label"), spec("logits")],
            ..iris()
        };
        let names: Vec<String> = outputs(&model).into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["label", "probability", "scores", "logits"]);
        assert_eq!(named_outputs(None, &model), ["logits"]);
        assert!(named_outputs(Some(&["scores".into()]), &model).is_empty());
        let twice = ["logits".to_string(), "logits".to_string()];
        assert_eq!(
            check_outputs(Some(&twice), &model).unwrap_err()[0].place,
            Place::Output(1)
        );
    }
}
