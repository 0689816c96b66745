//! What every ONNX model does with ONNX Runtime: a session from the graph's bytes (on the
//! device the worker runs on), a served output read as floats and split into one row per
//! input, logits made probabilities.

use anyhow::{Context, bail};
use ort::session::{Session, SessionOutputs};

use super::runtime;
use crate::models::model::LoadOptions;

/// Builds the ONNX Runtime session of `bytes`; on a CUDA device through ONNX Runtime's
/// CUDA execution provider (`onnxruntime-gpu`), failing the load rather than falling back
/// to the CPU.
pub fn session(bytes: &[u8], opts: &LoadOptions) -> anyhow::Result<Session> {
    let environment = runtime::environment()?;
    #[allow(unused_mut)]
    let mut builder = Session::builder(environment).map_err(|e| anyhow::anyhow!("{e}"))?;
    #[cfg(feature = "cuda")]
    if let candle_core::DeviceLocation::Cuda { gpu_id } = opts.device.location() {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(i32::try_from(gpu_id)?)
            .build()
            .error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            anyhow::anyhow!("ONNX Runtime's CUDA execution provider (onnxruntime-gpu): {e}")
        })?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = opts;
    let session = builder
        .commit_from_memory(bytes)
        .map_err(|e| anyhow::anyhow!("ONNX Runtime refused the graph: {e}"))?;
    Ok(session)
}

/// The float values of output `name` (float or double tensors).
pub fn read_output(outputs: &SessionOutputs<'_>, name: &str) -> anyhow::Result<Vec<f32>> {
    let value = outputs
        .get(name)
        .with_context(|| format!("ONNX Runtime gave no output {name:?}"))?;
    if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
        return Ok(data.to_vec());
    }
    if let Ok((_, data)) = value.try_extract_tensor::<f64>() {
        return Ok(data.iter().map(|&x| x as f32).collect());
    }
    bail!("output {name:?} is {:?}, not a float tensor", value.dtype())
}

/// `flat` as `n` rows of equal width, each through a softmax when `softmax` is set
/// (outputs ending in logits); an output that does not split into `n` rows is an error.
pub fn output_rows(flat: &[f32], n: usize, softmax: bool) -> anyhow::Result<Vec<Vec<f32>>> {
    if n == 0 || flat.is_empty() || !flat.len().is_multiple_of(n) {
        bail!("the model gave {} numbers for {n} inputs", flat.len());
    }
    Ok(flat
        .chunks_exact(flat.len() / n)
        .map(|row| {
            let mut row = row.to_vec();
            if softmax {
                softmax_in_place(&mut row);
            }
            row
        })
        .collect())
}

/// Softmax of one row.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|x| *x /= sum);
    }
}
