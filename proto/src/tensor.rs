//! Typed named tensors ([`Tensor`]): the element types of the Open Inference Protocol
//! ([`DataType`]), the checks a model's inputs pass against its signature
//! (`ModelInfo.inputs`) on both sides of the wire ([`check_inputs`]), and the two
//! reshapes batching needs: a batch split into its inputs ([`split`]) and inputs joined
//! into a batch ([`concat`]). The first dimension of every tensor counts the inputs.

use crate::pb::{Tensor, TensorInfo};

/// The largest number of elements one tensor may hold.
pub const MAX_ELEMENTS: usize = 1 << 24;

/// An element type, by its Open Inference Protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`: one byte, 0 or 1.
    Bool,
    /// `UINT8`.
    U8,
    /// `UINT16`.
    U16,
    /// `UINT32`.
    U32,
    /// `UINT64`.
    U64,
    /// `INT8`.
    I8,
    /// `INT16`.
    I16,
    /// `INT32`.
    I32,
    /// `INT64`.
    I64,
    /// `FP16`: IEEE 754 half precision.
    F16,
    /// `FP32`.
    F32,
    /// `FP64`.
    F64,
    /// `BYTES`: strings (UTF-8 text where a model reads them as strings).
    Bytes,
}

impl DataType {
    /// Every element type served.
    pub const ALL: [Self; 13] = [
        Self::Bool,
        Self::U8,
        Self::U16,
        Self::U32,
        Self::U64,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F16,
        Self::F32,
        Self::F64,
        Self::Bytes,
    ];

    /// Its Open Inference Protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// The element type named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Bytes per element in `raw_contents`; `None` for `BYTES`.
    pub fn width(self) -> Option<usize> {
        match self {
            Self::Bool | Self::U8 | Self::I8 => Some(1),
            Self::U16 | Self::I16 | Self::F16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::Bytes => None,
        }
    }

    /// Whether elements are floating point.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F16 | Self::F32 | Self::F64)
    }

    /// The names of every element type, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

/// The member of a tensor a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Its name.
    Name,
    /// Its element type.
    Datatype,
    /// Its shape.
    Shape,
    /// Its elements.
    Contents,
}

impl Member {
    /// The member's name in the OIP request (`contents` is `data` there).
    pub fn name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Datatype => "datatype",
            Self::Shape => "shape",
            Self::Contents => "data",
        }
    }
}

/// A problem with the tensors of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorError {
    /// The tensor at fault by its place in the request; `None` for the set of tensors (an
    /// input missing).
    pub tensor: Option<usize>,
    /// The tensor's name, as sent (or the missing input's).
    pub name: String,
    /// Its member at fault.
    pub member: Member,
    /// The element at fault (row-major over the whole tensor), if one.
    pub element: Option<usize>,
    /// The input of the batch the element belongs to, if one.
    pub row: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl TensorError {
    /// A problem with `member` of tensor `tensor` (named `name`), its message left empty.
    pub fn at(tensor: usize, name: &str, member: Member) -> Self {
        Self {
            tensor: Some(tensor),
            name: name.to_string(),
            member,
            element: None,
            row: None,
            message: String::new(),
        }
    }

    fn new(tensor: usize, t: &Tensor, member: Member, message: impl Into<String>) -> Self {
        Self {
            tensor: Some(tensor),
            name: t.name.clone(),
            member,
            element: None,
            row: None,
            message: message.into(),
        }
    }

    fn element(mut self, element: usize, per_row: usize) -> Self {
        self.element = Some(element);
        self.row = Some(element / per_row.max(1));
        self
    }
}

/// Elements of `shape`, if every dimension is non-negative and the count fits.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Elements of one input of the batch (the dimensions after the first).
fn per_row(shape: &[i64]) -> usize {
    element_count(shape.get(1..).unwrap_or_default()).unwrap_or(0)
}

/// A shape as a caller reads it: `[N, 1, 8, 8]`, `-1` dimensions as letters after the first.
pub fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, _) => "N".to_string(),
            (_, d) if d < 0 => "*".to_string(),
            (_, d) => d.to_string(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Whether `shape` has the rank of `declared`, no negative dimension, and the declared size
/// in every dimension after the first that `declared` fixes (`-1`: any size).
pub fn shape_fits(declared: &[i64], shape: &[i64]) -> bool {
    !shape.is_empty()
        && shape.len() == declared.len()
        && shape.iter().all(|&d| d >= 0)
        && shape
            .iter()
            .zip(declared)
            .skip(1)
            .all(|(&d, &s)| s < 0 || d == s)
}

/// Checks `tensors` against the inputs `specs` declares: each input sent once, under its
/// name, in its element type, of its rank and fixed dimensions, with as many elements as
/// its shape says, all usable (floats finite, `BOOL` 0 or 1, `BYTES` UTF-8 without NUL),
/// and every tensor with the same first dimension: the number of inputs, which is returned
/// (at least 1).
pub fn check_inputs(specs: &[TensorInfo], tensors: &[Tensor]) -> Result<usize, Vec<TensorError>> {
    let mut errors = Vec::new();
    let mut seen = vec![false; specs.len()];
    let mut batch: Option<(usize, usize)> = None;
    for (k, t) in tensors.iter().enumerate() {
        let Some(s) = specs.iter().position(|s| s.name == t.name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            errors.push(TensorError::new(
                k,
                t,
                Member::Name,
                format!("this model's inputs are {}", names.join(", ")),
            ));
            continue;
        };
        if std::mem::replace(&mut seen[s], true) {
            errors.push(TensorError::new(
                k,
                t,
                Member::Name,
                "is sent more than once",
            ));
            continue;
        }
        match check_one(&specs[s], t) {
            Err(e) => errors.push(e.into_error(k, t)),
            Ok(n) => match batch {
                Some((first, n0)) if n0 != n => errors.push(TensorError::new(
                    k,
                    t,
                    Member::Shape,
                    format!(
                        "its first dimension ({n}) must equal that of every input ({n0} in {:?})",
                        tensors[first].name
                    ),
                )),
                Some(_) => {}
                None => batch = Some((k, n)),
            },
        }
    }
    for (spec, seen) in specs.iter().zip(seen) {
        if !seen {
            errors.push(TensorError {
                tensor: None,
                name: spec.name.clone(),
                member: Member::Name,
                element: None,
                row: None,
                message: format!(
                    "input {:?} ({} {}) is missing",
                    spec.name,
                    spec.datatype,
                    shape_text(&spec.shape)
                ),
            });
        }
    }
    match (errors.is_empty(), batch) {
        (true, Some((_, n))) => Ok(n),
        (true, None) => Err(vec![TensorError {
            tensor: None,
            name: String::new(),
            member: Member::Name,
            element: None,
            row: None,
            message: "no inputs were sent".into(),
        }]),
        (false, _) => Err(errors),
    }
}

/// A problem inside one tensor, before its place is known.
struct Fault {
    member: Member,
    element: Option<(usize, usize)>,
    message: String,
}

impl Fault {
    fn new(member: Member, message: impl Into<String>) -> Self {
        Self {
            member,
            element: None,
            message: message.into(),
        }
    }

    fn into_error(self, k: usize, t: &Tensor) -> TensorError {
        let e = TensorError::new(k, t, self.member, self.message);
        match self.element {
            Some((element, per_row)) => e.element(element, per_row),
            None => e,
        }
    }
}

/// One tensor against its declared input: its first dimension when it fits.
fn check_one(spec: &TensorInfo, t: &Tensor) -> Result<usize, Fault> {
    let Some(datatype) = DataType::parse(&t.datatype) else {
        return Err(Fault::new(
            Member::Datatype,
            format!("must be one of {}", DataType::names()),
        ));
    };
    if t.datatype != spec.datatype {
        return Err(Fault::new(
            Member::Datatype,
            format!("this input takes {}", spec.datatype),
        ));
    }
    let want = || {
        format!(
            "must be {} for this input, got {:?}",
            shape_text(&spec.shape),
            t.shape
        )
    };
    if !shape_fits(&spec.shape, &t.shape) {
        return Err(Fault::new(Member::Shape, want()));
    }
    let n = t.shape[0] as usize;
    if n == 0 {
        return Err(Fault::new(
            Member::Shape,
            "needs at least one input (first dimension 0)",
        ));
    }
    let count = element_count(&t.shape)
        .filter(|&c| c <= MAX_ELEMENTS)
        .ok_or_else(|| {
            Fault::new(
                Member::Shape,
                format!("holds more than {MAX_ELEMENTS} elements"),
            )
        })?;
    let row = per_row(&t.shape);
    if count == 0 {
        return Err(Fault::new(Member::Shape, "holds no elements"));
    }
    let fault = |e: usize, message: String| Fault {
        member: Member::Contents,
        element: Some((e, row)),
        message,
    };
    match datatype.width() {
        None => {
            if !t.raw_contents.is_empty() || t.bytes_contents.len() != count {
                return Err(Fault::new(
                    Member::Contents,
                    format!(
                        "shape {:?} holds {count} BYTES elements, got {}",
                        t.shape,
                        t.bytes_contents.len()
                    ),
                ));
            }
            for (e, b) in t.bytes_contents.iter().enumerate() {
                if std::str::from_utf8(b).is_err() || b.contains(&0) {
                    return Err(fault(e, "must be UTF-8 text without NUL characters".into()));
                }
            }
        }
        Some(width) => {
            if !t.bytes_contents.is_empty() || t.raw_contents.len() != count * width {
                return Err(Fault::new(
                    Member::Contents,
                    format!(
                        "shape {:?} holds {count} {} elements ({} bytes each), got {} bytes",
                        t.shape,
                        datatype.name(),
                        width,
                        t.raw_contents.len()
                    ),
                ));
            }
            if let Some(e) = first_unusable(datatype, &t.raw_contents) {
                let message = match datatype {
                    DataType::Bool => "must be true or false (byte 0 or 1)",
                    _ => "must be a finite number",
                };
                return Err(fault(e, message.into()));
            }
        }
    }
    Ok(n)
}

/// The first element of `raw` that is not a usable value of `datatype`.
fn first_unusable(datatype: DataType, raw: &[u8]) -> Option<usize> {
    match datatype {
        DataType::Bool => raw.iter().position(|&b| b > 1),
        DataType::F16 => raw
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        DataType::F32 => raw
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        DataType::F64 => raw.chunks_exact(8).position(|b| {
            !f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()
        }),
        _ => None,
    }
}

/// `tensors` in the order of `specs` (checked by [`check_inputs`] first).
pub fn in_order(specs: &[TensorInfo], mut tensors: Vec<Tensor>) -> Vec<Tensor> {
    tensors.sort_by_key(|t| specs.iter().position(|s| s.name == t.name));
    tensors
}

/// A checked batch tensor as its `n` inputs, each of shape `[1, ...]`.
pub fn split(t: Tensor, n: usize) -> Vec<Tensor> {
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = 1;
    }
    let part = |raw: Vec<u8>, bytes: Vec<Vec<u8>>| Tensor {
        name: t.name.clone(),
        datatype: t.datatype.clone(),
        shape: shape.clone(),
        raw_contents: raw,
        bytes_contents: bytes,
    };
    if n == 0 {
        return Vec::new();
    }
    if t.raw_contents.is_empty() {
        let per = t.bytes_contents.len() / n;
        let mut items = t.bytes_contents.into_iter();
        (0..n)
            .map(|_| part(Vec::new(), items.by_ref().take(per).collect()))
            .collect()
    } else {
        let per = t.raw_contents.len() / n;
        t.raw_contents
            .chunks(per.max(1))
            .map(|c| part(c.to_vec(), Vec::new()))
            .collect()
    }
}

/// Tensors of one name and type joined along the first dimension; `None` when there are
/// none or their types or other dimensions differ.
pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Tensor>) -> Option<Tensor> {
    let mut parts = parts.into_iter();
    let mut out = parts.next()?.clone();
    for p in parts {
        if p.name != out.name
            || p.datatype != out.datatype
            || p.shape.len() != out.shape.len()
            || p.shape.get(1..) != out.shape.get(1..)
        {
            return None;
        }
        out.shape[0] += p.shape.first().copied().unwrap_or(0);
        out.raw_contents.extend_from_slice(&p.raw_contents);
        out.bytes_contents.extend(p.bytes_contents.iter().cloned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
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

    fn text(name: &str, values: &[&str]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: vec![values.len() as i64, 1],
            raw_contents: Vec::new(),
            bytes_contents: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        }
    }

    fn specs() -> Vec<TensorInfo> {
        vec![
            spec("age", "FP32", &[-1, 1]),
            spec("city", "BYTES", &[-1, 1]),
        ]
    }

    fn faults(tensors: &[Tensor]) -> Vec<(Option<usize>, Member, Option<usize>)> {
        check_inputs(&specs(), tensors)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.tensor, e.member, e.element))
            .collect()
    }

    #[test]
    fn named_inputs_pass_in_any_order_and_give_the_batch_size() {
        let sent = vec![
            text("city", &["paris", "oslo"]),
            fp32("age", &[2, 1], &[30.0, 41.0]),
        ];
        assert_eq!(check_inputs(&specs(), &sent), Ok(2));
        let ordered = in_order(&specs(), sent);
        assert_eq!(ordered[0].name, "age");
        let rows = split(ordered[1].clone(), 2);
        assert_eq!(rows[1].bytes_contents, [b"oslo".to_vec()]);
        assert_eq!(rows[1].shape, [1, 1]);
        assert_eq!(concat(&rows), Some(ordered[1].clone()));
    }

    #[test]
    fn each_problem_names_the_tensor_member_and_element() {
        let age = fp32("age", &[2, 1], &[30.0, 41.0]);
        let city = text("city", &["paris", "oslo"]);
        assert_eq!(
            faults(std::slice::from_ref(&age)),
            [(None, Member::Name, None)]
        );
        assert_eq!(
            faults(&[age.clone(), city.clone(), fp32("x", &[2, 1], &[0.0, 0.0])]),
            [(Some(2), Member::Name, None)]
        );
        let wide = fp32("age", &[1, 2], &[1.0, 2.0]);
        assert_eq!(
            faults(&[wide, city.clone()]),
            [(Some(0), Member::Shape, None)]
        );
        let mut typed = age.clone();
        typed.datatype = "FP64".into();
        assert_eq!(faults(&[typed, city.clone()])[0].1, Member::Datatype);
        let short = Tensor {
            raw_contents: vec![0; 4],
            ..age.clone()
        };
        assert_eq!(faults(&[short, city.clone()])[0].1, Member::Contents);
        let nan = fp32("age", &[2, 1], &[1.0, f32::NAN]);
        assert_eq!(
            faults(&[nan, city.clone()]),
            [(Some(0), Member::Contents, Some(1))]
        );
        let three = text("city", &["a", "b", "c"]);
        assert_eq!(faults(&[age.clone(), three])[0].1, Member::Shape);
        let nul = text("city", &["a", "b\0"]);
        let e = check_inputs(&specs(), &[age.clone(), nul]).unwrap_err();
        assert_eq!((e[0].element, e[0].row), (Some(1), Some(1)));
        let huge = Tensor {
            shape: vec![i64::MAX, 1],
            ..age
        };
        assert_eq!(faults(&[huge, city])[0].1, Member::Shape);
    }

    #[test]
    fn half_floats_and_bools_are_checked_bit_by_bit() {
        assert_eq!(
            first_unusable(DataType::F16, &[0x00, 0x3c, 0x00, 0x7c]),
            Some(1)
        );
        assert_eq!(first_unusable(DataType::F16, &[0xff, 0x7b]), None);
        assert_eq!(first_unusable(DataType::Bool, &[0, 1, 2]), Some(2));
        for t in DataType::ALL {
            assert_eq!(DataType::parse(t.name()), Some(t));
        }
    }
}
