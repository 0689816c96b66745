//! Typed tensors of the contract ([`pb::Tensor`]: little-endian elements, or strings) as
//! ONNX Runtime values and back, for every element type the worker serves.

use anyhow::{Context, bail};
use inferencehub_proto::DataType;
use inferencehub_proto::pb;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

/// `N` bytes as an array (callers pass chunks of exactly `N`).
fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(b);
    a
}

/// A checked tensor as an ONNX Runtime value.
pub fn to_ort(t: &pb::Tensor) -> anyhow::Result<DynValue> {
    let datatype = DataType::parse(&t.datatype)
        .with_context(|| format!("input {:?}: datatype {:?}", t.name, t.datatype))?;
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .with_context(|| format!("input {:?}: shape {:?}", t.name, t.shape))?;
    let raw = &t.raw_contents;
    macro_rules! numbers {
        ($ty:ty, $w:literal) => {
            Tensor::from_array((
                shape,
                raw.chunks_exact($w)
                    .map(|b| <$ty>::from_le_bytes(le(b)))
                    .collect::<Vec<$ty>>(),
            ))?
            .into_dyn()
        };
    }
    Ok(match datatype {
        DataType::Bool => {
            Tensor::from_array((shape, raw.iter().map(|&b| b != 0).collect::<Vec<bool>>()))?
                .into_dyn()
        }
        DataType::U8 => Tensor::from_array((shape, raw.clone()))?.into_dyn(),
        DataType::I8 => numbers!(i8, 1),
        DataType::U16 => numbers!(u16, 2),
        DataType::I16 => numbers!(i16, 2),
        DataType::U32 => numbers!(u32, 4),
        DataType::I32 => numbers!(i32, 4),
        DataType::U64 => numbers!(u64, 8),
        DataType::I64 => numbers!(i64, 8),
        DataType::F16 => numbers!(half::f16, 2),
        DataType::F32 => numbers!(f32, 4),
        DataType::F64 => numbers!(f64, 8),
        DataType::Bytes => {
            let texts = t
                .bytes_contents
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<Vec<String>, _>>()
                .with_context(|| format!("input {:?}: a string is not UTF-8", t.name))?;
            Tensor::from_string_array((shape, texts.as_slice()))?.into_dyn()
        }
    })
}

/// An ONNX Runtime output as a tensor named `name`.
pub fn from_ort(name: &str, value: &DynValue) -> anyhow::Result<pb::Tensor> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        bail!("output {name:?} is not a tensor");
    };
    let mut out = pb::Tensor {
        name: name.to_string(),
        ..Default::default()
    };
    macro_rules! numbers {
        ($ty:ty, $datatype:expr) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>()?;
            out.shape = shape.to_vec();
            out.datatype = $datatype.name().into();
            out.raw_contents = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        }};
    }
    match ty {
        TensorElementType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>()?;
            out.shape = shape.to_vec();
            out.datatype = DataType::Bool.name().into();
            out.raw_contents = data.iter().map(|&b| u8::from(b)).collect();
        }
        TensorElementType::Uint8 => numbers!(u8, DataType::U8),
        TensorElementType::Int8 => numbers!(i8, DataType::I8),
        TensorElementType::Uint16 => numbers!(u16, DataType::U16),
        TensorElementType::Int16 => numbers!(i16, DataType::I16),
        TensorElementType::Uint32 => numbers!(u32, DataType::U32),
        TensorElementType::Int32 => numbers!(i32, DataType::I32),
        TensorElementType::Uint64 => numbers!(u64, DataType::U64),
        TensorElementType::Int64 => numbers!(i64, DataType::I64),
        TensorElementType::Float16 => numbers!(half::f16, DataType::F16),
        TensorElementType::Float32 => numbers!(f32, DataType::F32),
        TensorElementType::Float64 => numbers!(f64, DataType::F64),
        TensorElementType::String => {
            let (shape, data) = value.try_extract_strings()?;
            out.shape = shape.to_vec();
            out.datatype = DataType::Bytes.name().into();
            out.bytes_contents = data.into_iter().map(String::into_bytes).collect();
        }
        other => bail!("output {name:?} has element type {other:?}, which is not served"),
    }
    Ok(out)
}
