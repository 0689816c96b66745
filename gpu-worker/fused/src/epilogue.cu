// The dense layers' epilogues for the tensor encoder on CUDA: what follows each matrix
// product (computed by cuBLAS without its bias) in one pass over its output.
//
// - bias_act: y = act(x + bias), act = exact GELU (erf), tanh GELU or ReLU; one block per
//   row.
// - bias_residual_norm: y = LayerNorm(x + bias + residual) · gamma + beta, one block per
//   row; the mean, then the variance around it (two reductions, f32), then the store.
//
// Arithmetic is f32 whatever the storage type.

#include <stdint.h>

#include "convert.cuh"

namespace {

// The activations, numbered as the Rust side passes them.
constexpr int GELU_ERF = 0;
constexpr int GELU_TANH = 1;
constexpr int RELU = 2;

__device__ __forceinline__ float activate(float v, int act) {
    switch (act) {
    case RELU:
        return fmaxf(v, 0.0f);
    case GELU_TANH:
        return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    case GELU_ERF:
    default:
        return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// One block per row (no per-element division to find the column).
template <typename T>
__device__ void bias_act(const T *__restrict__ x, const T *__restrict__ bias, T *__restrict__ y,
                         int n, int act) {
    const size_t row = blockIdx.x;
    const T *xr = x + row * n;
    T *yr = y + row * n;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        yr[c] = from_f32<T>(activate(to_f32(xr[c]) + to_f32(bias[c]), act));
    }
}

// The sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), on every
// thread. `scratch` holds one float per warp.
__device__ float block_sum(float v, float *scratch) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    __syncthreads();  // the scratch's previous sums have been read
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) {
        total += scratch[w];
    }
    return total;
}

// `params` is [3, n]: the product's bias, then gamma, then beta.
template <typename T>
__device__ void bias_residual_norm(const T *__restrict__ x, const T *__restrict__ residual,
                                   const T *__restrict__ params, T *__restrict__ y, int n,
                                   float eps) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T *xr = x + row * n;
    const T *rr = residual + row * n;
    const T *bias = params;
    const T *gamma = params + n;
    const T *beta = params + 2 * n;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        sum += to_f32(xr[c]) + to_f32(bias[c]) + to_f32(rr[c]);
    }
    const float mean = block_sum(sum, scratch) / n;
    float squares = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        const float d = to_f32(xr[c]) + to_f32(bias[c]) + to_f32(rr[c]) - mean;
        squares += d * d;
    }
    const float inv = rsqrtf(block_sum(squares, scratch) / n + eps);
    T *yr = y + row * n;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        const float v = to_f32(xr[c]) + to_f32(bias[c]) + to_f32(rr[c]);
        yr[c] = from_f32<T>((v - mean) * inv * to_f32(gamma[c]) + to_f32(beta[c]));
    }
}

}  // namespace

#define EPILOGUES(SUFFIX, T)                                                                    \
    extern "C" __global__ void bias_act_##SUFFIX(const T *x, const T *bias, T *y, int n,        \
                                                 int act) {                                     \
        bias_act<T>(x, bias, y, n, act);                                                        \
    }                                                                                           \
    extern "C" __global__ void bias_residual_norm_##SUFFIX(const T *x, const T *residual,       \
                                                           const T *params, T *y, int n,        \
                                                           float eps) {                         \
        bias_residual_norm<T>(x, residual, params, y, n, eps);                                  \
    }

EPILOGUES(f32, float)
EPILOGUES(f16, __half)
EPILOGUES(bf16, __nv_bfloat16)
