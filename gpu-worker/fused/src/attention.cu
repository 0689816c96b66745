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

// One entry point: kernel NAME runs the device function BODY for storage type T, heads of D.
#define ATTENTION(NAME, BODY, T, D)                                                        \
    extern "C" __global__ void NAME(const T *qkv, const T *bias, const uint32_t *lengths,    \
                                    T *out, int tokens, int heads, float scale) {           \
        BODY<T, D>(qkv, bias, lengths, out, tokens, heads, scale);                          \
    }

ATTENTION(attention_f32_d32, attention, float, 32)
ATTENTION(attention_f32_d64, attention, float, 64)
ATTENTION(attention_f16_d32, attention, __half, 32)
ATTENTION(attention_f16_d64, attention, __half, 64)
ATTENTION(attention_bf16_d32, attention, __nv_bfloat16, 32)
ATTENTION(attention_bf16_d64, attention, __nv_bfloat16, 64)

// ---------------------------------------------------------------------------------------
// Tensor-core attention (sm_80 and newer), for f16 and bf16: the same computation and the
// same inputs and output as above, with both products (scores = Q·Kᵀ, context = P·V) on the
// tensor cores (`mma.sync` m16n8k16: 16-bit inputs, f32 accumulators).
//
// One warp per 16 query rows, up to four warps per block (64 rows) sharing the staged keys
// and values. Keys come through shared memory 64 at a time (with their bias, rounded to the
// storage type as the reference path's bias add rounds them), as `[key][channel]`; values
// transposed, `[channel][key]`, so that every fragment a thread feeds the tensor core is
// one aligned 32-bit load. Rows are padded by 8 elements so that the eight row groups of a
// warp hit eight different banks. Scores stay in the accumulator registers: scaled in f32,
// padded keys set to -inf, online softmax per row (a row's 64 scores sit in the four threads
// of a quad: two shuffles find its maximum), and the probabilities, rounded to the storage
// type, are the next product's A fragments without leaving the registers (the m16n8
// accumulator layout of two adjacent key blocks is the m16k16 operand layout).
// ---------------------------------------------------------------------------------------

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

namespace {

// Keys per staged tile, and the padding of each shared-memory row (in elements).
constexpr int MMA_KT = 64;
constexpr int PAD = 8;

template <typename T> __device__ __forceinline__ uint32_t pack(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <> __device__ __forceinline__ uint32_t pack<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

// d += a · b for one m16n8k16 tile: `a` the 16 x 16 row-major operand (four registers of
// two elements), `b` the 16 x 8 column-major operand (two registers), `d` 16 x 8 in f32.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1);
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                            uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two adjacent elements of shared memory as one 32-bit word (the index is even).
template <typename T> __device__ __forceinline__ uint32_t word(const T *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

template <typename T, int D>
__device__ void attention_mma(const T *__restrict__ qkv, const T *__restrict__ bias,
                              const uint32_t *__restrict__ lengths, T *__restrict__ out,
                              int tokens, int heads, float scale) {
    __shared__ __align__(16) T keys[MMA_KT][D + PAD];
    __shared__ __align__(16) T values[D][MMA_KT + PAD];
    const int seq = blockIdx.z;
    const int head = blockIdx.y;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int group = lane / 4;   // the fragment row (and the B operand's column)
    const int quad = lane % 4;    // the thread within its row's quad
    const int warps = blockDim.x / 32;
    const int hidden = heads * D;
    const size_t stride = 3 * (size_t)hidden;
    const int len = min((int)lengths[seq], tokens);
    const T *base = qkv + (size_t)seq * tokens * stride + (size_t)head * D;
    const T *qb = bias + head * D;
    const T *kb = qb + hidden;
    const T *vb = qb + 2 * hidden;
    // This thread's two rows: `group` and `group + 8` of the warp's sixteen.
    const int row0 = (blockIdx.x * warps + warp) * 16 + group;
    const int row1 = row0 + 8;

    // The queries with their bias, as A fragments: D / 16 steps of k.
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int half_k = 0; half_k < 2; ++half_k) {
            const int c = kk * 16 + half_k * 8 + quad * 2;
            float v[2][2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = r == 0 ? row0 : row1;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    v[r][e] = row < tokens
                                  ? to_f32(from_f32<T>(to_f32(base[(size_t)row * stride + c + e]) +
                                                       to_f32(qb[c + e])))
                                  : 0.0f;
                }
            }
            qa[kk][half_k * 2] = pack<T>(v[0][0], v[0][1]);
            qa[kk][half_k * 2 + 1] = pack<T>(v[1][0], v[1][1]);
        }
    }

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    }
    // Running maximum (in log2 units) and this thread's share of the running sum, per row.
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.0f, 0.0f};
    const float scale_log2 = scale * 1.4426950408889634f;

    for (int k0 = 0; k0 < len; k0 += MMA_KT) {
        __syncthreads();  // the previous tile is no longer read
        for (int i = threadIdx.x; i < MMA_KT * D / 2; i += blockDim.x) {
            const int j = i / (D / 2);
            const int c = 2 * (i % (D / 2));
            float k[2] = {0.0f, 0.0f};
            float v[2] = {0.0f, 0.0f};
            if (k0 + j < len) {
                const T *token = base + (size_t)(k0 + j) * stride;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    k[e] = to_f32(token[hidden + c + e]) + to_f32(kb[c + e]);
                    v[e] = to_f32(token[2 * hidden + c + e]) + to_f32(vb[c + e]);
                }
            }
            *reinterpret_cast<uint32_t *>(&keys[j][c]) = pack<T>(k[0], k[1]);
            values[c][j] = from_f32<T>(v[0]);
            values[c + 1][j] = from_f32<T>(v[1]);
        }
        __syncthreads();

        // Scores of the warp's 16 rows against the tile's 64 keys: 8 blocks of 8 keys.
        float s[MMA_KT / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const T *key = &keys[n * 8 + group][kk * 16 + quad * 2];
                mma<T>(s[n], qa[kk], word(key), word(key + 8));
            }
        }
        // Scale, mask the keys past the sequence's end, and each row's maximum.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + n * 8 + quad * 2 + (e & 1);
                s[n][e] = key < len ? s[n][e] * scale_log2 : -INFINITY;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
            }
        }
        float rescale[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            // Finite: the tile holds at least one real key. 0 on the first tile.
            const float next = fmaxf(m[r], tile_max[r]);
            rescale[r] = exp2f(m[r] - next);
            m[r] = next;
            l[r] *= rescale[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            acc[n][0] *= rescale[0];
            acc[n][1] *= rescale[0];
            acc[n][2] *= rescale[1];
            acc[n][3] *= rescale[1];
        }
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[n][e] = exp2f(s[n][e] - m[e / 2]);  // 0 past the sequence's end
                l[e / 2] += s[n][e];
            }
        }
        // Context += P · V, 16 keys per step: the probabilities of key blocks 2kk and
        // 2kk + 1 are the A fragment as they lie.
#pragma unroll
        for (int kk = 0; kk < MMA_KT / 16; ++kk) {
            const uint32_t pa[4] = {
                pack<T>(s[2 * kk][0], s[2 * kk][1]),
                pack<T>(s[2 * kk][2], s[2 * kk][3]),
                pack<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const T *value = &values[n * 8 + group][kk * 16 + quad * 2];
                mma<T>(acc[n], pa, word(value), word(value + 8));
            }
        }
    }

    // Each row's sum over its quad; an empty sequence (never sent by the encoder) gets zeros.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inv[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        if (row >= tokens) {
            continue;
        }
        T *dst = out + ((size_t)seq * tokens + row) * hidden + (size_t)head * D + quad * 2;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *reinterpret_cast<uint32_t *>(dst + n * 8) =
                pack<T>(acc[n][2 * r] * inv[r], acc[n][2 * r + 1] * inv[r]);
        }
    }
}

}  // namespace

ATTENTION(attention_mma_f16_d32, attention_mma, __half, 32)
ATTENTION(attention_mma_f16_d64, attention_mma, __half, 64)
ATTENTION(attention_mma_bf16_d32, attention_mma, __nv_bfloat16, 32)
ATTENTION(attention_mma_bf16_d64, attention_mma, __nv_bfloat16, 64)

#endif  // __CUDA_ARCH__ >= 800
