//! The kernels' launches on CUDA: the crate's only `unsafe` code.

use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Result};

use crate::attention::Dims;
use crate::contiguous;

/// The kernels, compiled by build.rs.
const ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const EPILOGUE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/epilogue.ptx"));

/// Query rows per attention block (one thread each); fewer when the sequences are shorter.
const QUERIES_PER_BLOCK: usize = 64;

/// Warps per tensor-core attention block (16 query rows each); fewer for shorter sequences.
const MMA_WARPS: usize = 4;

/// Whether the PTX holds the tensor-core attention (`mma.sync` with f16 and bf16 inputs
/// needs sm_80): the compute capability build.rs compiled for.
fn tensor_core_attention() -> bool {
    env!("INFERENCEHUB_FUSED_COMPUTE_CAP")
        .parse::<u32>()
        .is_ok_and(|cap| cap >= 80)
}

/// Threads per block of the bias + activation kernel (one block per row).
const THREADS: u32 = 256;

/// Threads per LayerNorm row (a multiple of 32: the kernel reduces whole warps).
const NORM_THREADS: u32 = 128;

/// A grid's largest x extent, and its largest y and z extents.
const MAX_GRID_X: usize = (1 << 31) - 1;
const MAX_GRID_YZ: usize = 65_535;

type Input<'a> = (&'a CudaStorage, &'a Layout);

/// The elements of a contiguous input, from its layout's offset.
fn view<'a, T: CudaDType + DeviceRepr>(
    (storage, layout): Input<'a>,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let (start, end) = contiguous(layout, op)?;
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

fn device(input: Input<'_>) -> CudaDevice {
    input.0.device.clone()
}

pub(crate) struct AttentionArgs<'a> {
    pub qkv: Input<'a>,
    pub bias: Input<'a>,
    pub lengths: Input<'a>,
    pub dims: Dims,
}

#[allow(unsafe_code)]
pub(crate) fn attention<T: CudaDType + DeviceRepr>(
    args: AttentionArgs<'_>,
    dtype: &str,
) -> Result<CudaStorage> {
    let op = "fused attention";
    let dims = args.dims;
    let d = dims.head_size;
    if !crate::CUDA_HEAD_SIZES.contains(&d) {
        candle_core::bail!("{op}: no CUDA kernel for heads of {d}");
    }
    if dims.batch > MAX_GRID_YZ || dims.heads > MAX_GRID_YZ {
        candle_core::bail!(
            "{op}: {} sequences of {} heads is more than one launch holds",
            dims.batch,
            dims.heads
        );
    }
    let device = device(args.qkv);
    // f16 and bf16 on the tensor cores where the PTX has them; f32 keeps f32 arithmetic.
    let mma = dtype != "f32" && tensor_core_attention();
    let name = if mma {
        format!("attention_mma_{dtype}_d{d}")
    } else {
        format!("attention_{dtype}_d{d}")
    };
    let func = device.get_or_load_custom_func(&name, "inferencehub_attention", ATTENTION_PTX)?;
    let qkv = view::<T>(args.qkv, op)?;
    let bias = view::<T>(args.bias, op)?;
    let lengths = view::<u32>(args.lengths, op)?;
    let count = dims.batch * dims.tokens * dims.hidden();
    // SAFETY: the kernel writes every element: each row of each (sequence, head) is one
    // thread's (or, on the tensor cores, one quad's) to store, all `d` columns of that head,
    // and the grid covers every row of every sequence.
    let out = unsafe { device.alloc::<T>(count)? };
    // Rows per block, and threads per block (one per row; 32 per 16 rows on the tensor cores).
    let (rows, threads) = if mma {
        let warps = MMA_WARPS.min(dims.tokens.div_ceil(16));
        (16 * warps, 32 * warps)
    } else {
        let block = QUERIES_PER_BLOCK.min(dims.tokens.div_ceil(32) * 32);
        (block, block)
    };
    let cfg = LaunchConfig {
        grid_dim: (
            dims.tokens.div_ceil(rows) as u32,
            dims.heads as u32,
            dims.batch as u32,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (tokens, heads, scale) = (dims.tokens as i32, dims.heads as i32, dims.scale());
    let mut builder = func.builder();
    builder
        .arg(&qkv)
        .arg(&bias)
        .arg(&lengths)
        .arg(&out)
        .arg(&tokens)
        .arg(&heads)
        .arg(&scale);
    // SAFETY: the arguments are the kernel's parameters in order and type (T*, T*, u32*,
    // T*, int, int, float); `qkv` holds batch × tokens × 3 × hidden elements, `bias`
    // 3 × hidden, `lengths` batch (checked by the op) and `out` batch × tokens × hidden,
    // which is what the kernel indexes for this grid.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}

pub(crate) struct BiasActArgs<'a> {
    pub x: Input<'a>,
    pub bias: Input<'a>,
    pub rows: usize,
    pub n: usize,
    pub act: i32,
}

#[allow(unsafe_code)]
pub(crate) fn bias_act<T: CudaDType + DeviceRepr>(
    args: BiasActArgs<'_>,
    dtype: &str,
) -> Result<CudaStorage> {
    let op = "fused bias + activation";
    let device = device(args.x);
    let func = device.get_or_load_custom_func(
        &format!("bias_act_{dtype}"),
        "inferencehub_epilogue",
        EPILOGUE_PTX,
    )?;
    let x = view::<T>(args.x, op)?;
    let bias = view::<T>(args.bias, op)?;
    if args.rows > MAX_GRID_X {
        candle_core::bail!("{op}: {} rows is more than one launch holds", args.rows);
    }
    // SAFETY: one block per row, each writing all `n` columns of its row.
    let out = unsafe { device.alloc::<T>(args.rows * args.n)? };
    let cfg = LaunchConfig {
        grid_dim: (args.rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n, act) = (args.n as i32, args.act);
    let mut builder = func.builder();
    builder.arg(&x).arg(&bias).arg(&out).arg(&n).arg(&act);
    // SAFETY: the arguments are the kernel's parameters in order and type (T*, T*, T*, int,
    // int); `x` and `out` hold rows × n elements and `bias` n (checked by the op), which is
    // what the kernel indexes for this grid.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}

pub(crate) struct NormArgs<'a> {
    pub x: Input<'a>,
    pub residual: Input<'a>,
    pub params: Input<'a>,
    pub rows: usize,
    pub n: usize,
    pub eps: f32,
}

#[allow(unsafe_code)]
pub(crate) fn bias_residual_norm<T: CudaDType + DeviceRepr>(
    args: NormArgs<'_>,
    dtype: &str,
) -> Result<CudaStorage> {
    let op = "fused bias + residual + LayerNorm";
    let device = device(args.x);
    let func = device.get_or_load_custom_func(
        &format!("bias_residual_norm_{dtype}"),
        "inferencehub_epilogue",
        EPILOGUE_PTX,
    )?;
    let x = view::<T>(args.x, op)?;
    let residual = view::<T>(args.residual, op)?;
    let params = view::<T>(args.params, op)?;
    if args.rows > MAX_GRID_X {
        candle_core::bail!("{op}: {} rows is more than one launch holds", args.rows);
    }
    // SAFETY: one block per row, each writing all `n` columns of its row.
    let out = unsafe { device.alloc::<T>(args.rows * args.n)? };
    let cfg = LaunchConfig {
        grid_dim: (args.rows as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n, eps) = (args.n as i32, args.eps);
    let mut builder = func.builder();
    builder
        .arg(&x)
        .arg(&residual)
        .arg(&params)
        .arg(&out)
        .arg(&n)
        .arg(&eps);
    // SAFETY: the arguments are the kernel's parameters in order and type (T*, T*, T*, T*,
    // int, float); `x`, `residual` and `out` hold rows × n elements and `params` 3 × n
    // (checked by the op), which is what the kernel indexes for this grid.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, device))
}
