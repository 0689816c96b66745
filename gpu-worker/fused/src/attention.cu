// Fused multi-head self-attention for the tensor encoder on CUDA.
//
// Reads queries, keys and values straight from the fused projection's output
// (`qkv`, `[batch * tokens, 3 * hidden]`, row-major: every token's queries, then its keys,
// then its values, heads side by side; the projection's bias, `[3 * hidden]`, added here as
// they are read) and writes the context (`[batch * tokens, hidden]`): no bias pass, no head
// split copy, no score matrix in memory, no separate softmax or mask pass.
//
// One block per (query tile, head, sequence); one thread per query row. Keys and values of
// the sequence's head are staged through shared memory, KT keys at a time, as f32; each
// thread keeps its (scaled) query and its output accumulator in registers and runs an
// online softmax over the tiles (running maximum `m`, running sum `l`; the accumulator is
// rescaled once per tile). Keys past the sequence's length (padding) are never read, which
// is what the reference path's -10 000 bias on padded keys computes (exp underflows to 0).
// Query rows past the length are computed like the others and ignored by the pooling, as
// in the reference path. Arithmetic is f32 whatever the storage type.

#include <stdint.h>

#include "convert.cuh"

namespace {

// Keys (and values) per shared-memory tile (16 x 64 x 2 floats = 8 KiB at the widest head):
// the tile's scores stay in registers, and the kernels' code stays small.
constexpr int KT = 16;

template <typename T, int D>
__device__ void attention(const T *__restrict__ qkv, const T *__restrict__ bias,
                          const uint32_t *__restrict__ lengths, T *__restrict__ out, int tokens,
                          int heads, float scale) {
    // As float4: one shared-memory load feeds four multiply-adds.
    __shared__ float4 keys[KT][D / 4];
    __shared__ float4 values[KT][D / 4];
    const int seq = blockIdx.z;
    const int head = blockIdx.y;
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const int hidden = heads * D;
    const size_t stride = 3 * (size_t)hidden;
    const int len = min((int)lengths[seq], tokens);
    const T *base = qkv + (size_t)seq * tokens * stride + (size_t)head * D;
    const bool active = row < tokens;
    const T *qb = bias + head * D;
    const T *kb = qb + hidden;
    const T *vb = qb + 2 * hidden;

    float q[D];
    float acc[D];
#pragma unroll
    for (int c = 0; c < D; ++c) {
        q[c] = active ? (to_f32(base[(size_t)row * stride + c]) + to_f32(qb[c])) * scale : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY;
    float l = 0.0f;
    for (int k0 = 0; k0 < len; k0 += KT) {
        const int n = min(KT, len - k0);
        __syncthreads();  // the previous tile is no longer read
        // A whole tile always: keys past the sequence's end are zeros here and get a score
        // of -inf below, so no loop over the tile branches per key (the compiler keeps the
        // sixteen keys' products interleaved instead of one key after another).
        for (int i = threadIdx.x; i < KT * D; i += blockDim.x) {
            const int j = i / D;
            const int c = i % D;
            float key = 0.0f;
            float value = 0.0f;
            if (j < n) {
                const T *token = base + (size_t)(k0 + j) * stride;
                key = to_f32(token[hidden + c]) + to_f32(kb[c]);
                value = to_f32(token[2 * hidden + c]) + to_f32(vb[c]);
            }
            reinterpret_cast<float *>(keys[j])[c] = key;
            reinterpret_cast<float *>(values[j])[c] = value;
        }
        __syncthreads();
        if (!active) {
            continue;
        }
        float s[KT];
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < KT; ++j) {
            // Four partial sums: short dependency chains.
            float dot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int c = 0; c < D / 4; ++c) {
                const float4 k = keys[j][c];
                dot[0] = fmaf(q[4 * c], k.x, dot[0]);
                dot[1] = fmaf(q[4 * c + 1], k.y, dot[1]);
                dot[2] = fmaf(q[4 * c + 2], k.z, dot[2]);
                dot[3] = fmaf(q[4 * c + 3], k.w, dot[3]);
            }
            s[j] = j < n ? (dot[0] + dot[1]) + (dot[2] + dot[3]) : -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float next = fmaxf(m, tile_max);
        const float rescale = expf(m - next);  // 0 on the first tile (m = -inf)
        l *= rescale;
#pragma unroll
        for (int c = 0; c < D; ++c) {
            acc[c] *= rescale;
        }
#pragma unroll
        for (int j = 0; j < KT; ++j) {
            const float p = expf(s[j] - next);  // 0 past the sequence's end (s = -inf)
            l += p;
#pragma unroll
            for (int c = 0; c < D / 4; ++c) {
                const float4 v = values[j][c];
                acc[4 * c] = fmaf(p, v.x, acc[4 * c]);
                acc[4 * c + 1] = fmaf(p, v.y, acc[4 * c + 1]);
                acc[4 * c + 2] = fmaf(p, v.z, acc[4 * c + 2]);
                acc[4 * c + 3] = fmaf(p, v.w, acc[4 * c + 3]);
            }
        }
        m = next;
    }
    if (!active) {
        return;
    }
    // An empty sequence (never sent by the encoder) gets zeros, not a division by zero.
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T *dst = out + ((size_t)seq * tokens + row) * hidden + (size_t)head * D;
#pragma unroll
    for (int c = 0; c < D; ++c) {
        dst[c] = from_f32<T>(acc[c] * inv);
    }
}

}  // namespace

#define ATTENTION(NAME, T, D)                                                              \
    extern "C" __global__ void NAME(const T *qkv, const T *bias, const uint32_t *lengths,    \
                                    T *out, int tokens, int heads, float scale) {           \
        attention<T, D>(qkv, bias, lengths, out, tokens, heads, scale);                     \
    }

ATTENTION(attention_f32_d32, float, 32)
ATTENTION(attention_f32_d64, float, 64)
ATTENTION(attention_f16_d32, __half, 32)
ATTENTION(attention_f16_d64, __half, 64)
ATTENTION(attention_bf16_d32, __nv_bfloat16, 32)
ATTENTION(attention_bf16_d64, __nv_bfloat16, 64)
