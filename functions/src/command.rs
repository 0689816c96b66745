//! What a caller asks of a model, in no protocol's terms: every protocol decodes into a
//! [`Command`] and names the [`Place`]s of its problems in its own words; the one path in
//! [`crate::infer`] authorizes, validates, charges and calls the worker with it.

use inferencehub_proto::pb::{ModelInfo, ModelKind, ModelTask};
use inferencehub_proto::{InputError, InputSignature};

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
}

/// A command's inputs as the protocol carried them.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// One entry per input with the fields the caller sent.
    Fields(Vec<Sent>),
    /// Named tensors whose first dimension counts the inputs.
    Tensors(Vec<Tensor>),
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

/// A tensor as sent: name, element type, shape and row-major elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its shape (checked non-negative, with as many elements as the data holds).
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: TensorData,
}

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BYTES` elements that are UTF-8 text.
    Bytes(Vec<String>),
    /// `FP32` elements.
    Fp32(Vec<f32>),
}

impl TensorData {
    /// The Open Inference Protocol's name of its element type.
    pub fn datatype(&self) -> &'static str {
        match self {
            Self::Bytes(_) => "BYTES",
            Self::Fp32(_) => "FP32",
        }
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
    /// A member (`name`, `datatype`, `shape`, `data`) of tensor `index`.
    Tensor(usize, &'static str),
    /// The tensors as a whole (how many, which).
    Tensors,
    /// Requested output `index`.
    Output(usize),
    /// A place the protocol named itself while decoding (`body`, `features[2]`).
    Named(String),
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

/// The name of `model`'s one input: its ONNX graph's, else `prompt` / `features`.
pub fn input_name(model: &ModelInfo) -> String {
    match &model.input {
        Some(t) if !t.name.is_empty() => t.name.clone(),
        _ if model.kind() == ModelKind::Text => "prompt".into(),
        _ => "features".into(),
    }
}

/// One output a model answers with: name, element type and shape (`-1`: the inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Its name.
    pub name: &'static str,
    /// Its element type.
    pub datatype: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// What `model` answers: a classifier `label` (`BYTES [N]`), `probability` (`FP32 [N]`) and
/// `scores` (`FP32 [N, L]`, one column per label in the model's label order); a regressor
/// `values` (`FP32 [N, V]`).
pub fn outputs(model: &ModelInfo) -> Vec<OutputSpec> {
    let spec = |name, datatype, shape| OutputSpec {
        name,
        datatype,
        shape,
    };
    if model.task() == ModelTask::Regression {
        vec![spec(
            "values",
            "FP32",
            vec![-1, model.value_count.max(1) as i64],
        )]
    } else {
        vec![
            spec("label", "BYTES", vec![-1]),
            spec("probability", "FP32", vec![-1]),
            spec("scores", "FP32", vec![-1, model.labels.len() as i64]),
        ]
    }
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

/// The element type of `model`'s one input tensor.
pub fn input_datatype(model: &ModelInfo) -> &'static str {
    match model.kind() {
        ModelKind::Tabular => "FP32",
        _ => "BYTES",
    }
}

impl Inputs {
    /// One [`Sent`] per input, for `model`: tensors must be the model's one input, by name,
    /// element type and shape.
    pub fn bind(self, model: &ModelInfo) -> Result<Vec<Sent>, Vec<Invalid>> {
        let tensors = match self {
            Self::Fields(sent) => return Ok(sent),
            Self::Tensors(tensors) => tensors,
        };
        let name = input_name(model);
        let err = |place, message: String| vec![Invalid::new(place, message)];
        let [tensor] = <[Tensor; 1]>::try_from(tensors).map_err(|sent| {
            err(
                Place::Tensors,
                format!(
                    "this model takes exactly one input, {name:?}; got {}",
                    sent.len()
                ),
            )
        })?;
        if tensor.name != name {
            return Err(err(
                Place::Tensor(0, "name"),
                format!("this model's input is {name:?}"),
            ));
        }
        let datatype = input_datatype(model);
        if tensor.data.datatype() != datatype {
            return Err(err(
                Place::Tensor(0, "datatype"),
                format!("this model takes {datatype}"),
            ));
        }
        let features = model.feature_count as usize;
        let declared = input_shape(model);
        let item_fits = |rest: &[usize]| {
            rest.len() + 1 == declared.len()
                && rest
                    .iter()
                    .zip(&declared[1..])
                    .all(|(&a, &b)| a as i64 == b)
        };
        match (tensor.data, tensor.shape.as_slice()) {
            (TensorData::Bytes(texts), [_]) => Ok(texts
                .into_iter()
                .map(|p| Sent {
                    prompt: Some(p),
                    features: None,
                })
                .collect()),
            (TensorData::Fp32(values), [_, rest @ ..]) if item_fits(rest) && features > 0 => {
                Ok(values
                    .chunks_exact(features)
                    .map(|row| Sent {
                        prompt: None,
                        features: Some(row.to_vec()),
                    })
                    .collect())
            }
            _ => {
                let dims: Vec<String> = declared[1..].iter().map(i64::to_string).collect();
                let want = match model.kind() {
                    ModelKind::Tabular => format!("[N, {}]", dims.join(", ")),
                    _ => "[N]".to_string(),
                };
                Err(err(
                    Place::Tensor(0, "shape"),
                    format!("must be {want} for this model"),
                ))
            }
        }
    }
}

/// Checks `inputs` against `signature` and `max` inputs per request.
pub fn validate(
    inputs: &[Sent],
    signature: InputSignature,
    max: usize,
) -> Result<(), Vec<Invalid>> {
    if inputs.is_empty() || inputs.len() > max {
        return Err(vec![Invalid::new(
            Place::Batch,
            format!(
                "between 1 and {max} inputs per request, got {}",
                inputs.len()
            ),
        )]);
    }
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

/// Checks the requested output names against what `model` answers.
pub fn check_outputs(requested: Option<&[String]>, model: &ModelInfo) -> Result<(), Vec<Invalid>> {
    let available = outputs(model);
    let names: Vec<&str> = available.iter().map(|o| o.name).collect();
    let errors: Vec<Invalid> = requested
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, o)| !names.contains(&o.as_str()))
        .map(|(i, _)| {
            Invalid::new(
                Place::Output(i),
                format!("this model's outputs are {}", names.join(", ")),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris() -> ModelInfo {
        ModelInfo {
            name: "iris".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 2,
            ..Default::default()
        }
    }

    fn places(r: Result<Vec<Sent>, Vec<Invalid>>) -> Vec<Place> {
        r.unwrap_err().into_iter().map(|e| e.place).collect()
    }

    #[test]
    fn tensors_bind_to_the_models_one_input() {
        let rows = Tensor {
            name: "features".into(),
            shape: vec![2, 2],
            data: TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]),
        };
        let sent = Inputs::Tensors(vec![rows.clone()]).bind(&iris()).unwrap();
        assert_eq!(sent[1].features.as_deref(), Some(&[3.0, 4.0][..]));
        let renamed = Tensor {
            name: "x".into(),
            ..rows.clone()
        };
        assert_eq!(
            places(Inputs::Tensors(vec![renamed]).bind(&iris())),
            [Place::Tensor(0, "name")]
        );
        let wide = Tensor {
            shape: vec![1, 4],
            ..rows.clone()
        };
        assert_eq!(
            places(Inputs::Tensors(vec![wide]).bind(&iris())),
            [Place::Tensor(0, "shape")]
        );
        let text = Tensor {
            data: TensorData::Bytes(vec!["a".into()]),
            shape: vec![1],
            ..rows.clone()
        };
        assert_eq!(
            places(Inputs::Tensors(vec![text]).bind(&iris())),
            [Place::Tensor(0, "datatype")]
        );
        assert_eq!(
            places(Inputs::Tensors(vec![rows.clone(), rows]).bind(&iris())),
            [Place::Tensors]
        );
    }

    #[test]
    fn an_image_input_binds_by_its_declared_dimensions() {
        let digits = ModelInfo {
            name: "digits".into(),
            kind: ModelKind::Tabular as i32,
            feature_count: 64,
            input: Some(inferencehub_proto::pb::TensorInfo {
                name: "image".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 1, 8, 8],
            }),
            ..Default::default()
        };
        assert_eq!(input_shape(&digits), [-1, 1, 8, 8]);
        let images = Tensor {
            name: "image".into(),
            shape: vec![2, 1, 8, 8],
            data: TensorData::Fp32((0..128).map(|i| i as f32).collect()),
        };
        let sent = Inputs::Tensors(vec![images.clone()]).bind(&digits).unwrap();
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
            assert_eq!(errors[0].place, Place::Tensor(0, "shape"));
            assert!(
                errors[0].message.contains("[N, 1, 8, 8]"),
                "{}",
                errors[0].message
            );
        }
    }

    #[test]
    fn validation_names_each_input_and_the_batch() {
        let signature = InputSignature::Tabular { feature_count: 2 };
        let sent = |f: &[f32]| Sent {
            features: Some(f.to_vec()),
            prompt: None,
        };
        assert!(validate(&[sent(&[1.0, 2.0])], signature, 2).is_ok());
        let errors = validate(&[sent(&[1.0, 2.0]), sent(&[1.0])], signature, 2).unwrap_err();
        assert!(matches!(errors[0].place, Place::Input(1, _)));
        let errors = validate(&[], signature, 2).unwrap_err();
        assert_eq!(errors[0].place, Place::Batch);
        let three = vec![sent(&[1.0, 2.0]); 3];
        assert_eq!(
            validate(&three, signature, 2).unwrap_err()[0].place,
            Place::Batch
        );
    }
}
