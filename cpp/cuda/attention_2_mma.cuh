// Attention version 2, mma: FlashAttention-2 on tensor cores (float16 / bfloat16, head widths up to
// 128).  Over version 1 it moves both products onto mma.sync m16n8k16 with float32 accumulation: a
// block of 4 warps owns 64 query rows (16 per warp) and keeps their Q fragments in registers for the
// whole pass.  The S accumulator layout of two adjacent 8-key n-tiles is exactly the A-operand
// layout of a 16-key k-step, so P goes from the softmax to the second MMA (O += P V) without
// touching shared memory.  V is stored transposed in shared memory so its B fragments are 32-bit
// loads; row pitches carry 8 halves of padding, which puts the fragment loads of the 8 row groups
// in distinct banks.  For head widths up to 64 the next K/V tile is loaded into registers during
// the current tile's MMAs; tiles where every key is visible to every row skip the per-element mask
// tests.  Softmax runs in the log2 domain (exp2), row statistics are reduced across the 4 threads
// that share a row.  dev/cuda/emulate_attention_mma.py replays the fragment bookkeeping.
// algo="mma"; auto runs it where version 3 cannot (rows not 16-byte aligned; ops_cuda.h).
#pragma once
#include "attention_1_simt.cuh"
#include "ptx.cuh"

namespace pyworkloads::cuda {

namespace {

constexpr int kMmaRows = 64, kMmaCols = 64, kMmaThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t ld_shared_u32(const void* ptr) { return *static_cast<const uint32_t*>(ptr); }

// 8 consecutive elements of row `row` starting at column d (zeros outside [rows, width)), as
// one 16-byte register.
template <class T>
__device__ __forceinline__ uint4 load8(const T* src, int64_t st, int64_t row, int64_t rows, int d, int64_t width,
                                       bool vec) {
    if (vec)                       // width % 8 == 0: a chunk is entirely inside or outside
        return (row < rows && d < width) ? *reinterpret_cast<const uint4*>(src + row * st + d)
                                         : make_uint4(0u, 0u, 0u, 0u);
    alignas(16) T v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = (row < rows && d + e < width) ? src[row * st + d + e] : from_float<T>(0.f);
    return *reinterpret_cast<const uint4*>(v);
}

template <class T, int kD>
__global__ void __launch_bounds__(kMmaThreads) attention_mma(AttnProblem p) {
    constexpr int kLd = kD + 8, kLdV = kMmaCols + 8, kChunks = kD / 8;
    constexpr int kPer = kMmaCols * kChunks / kMmaThreads;   // 16-byte chunks of a K (or V) tile per thread
    static_assert(kMmaRows == kMmaCols, "the Q tile is staged in the K buffer");
    __shared__ __align__(16) T Ks[kMmaCols * kLd];     // K tile, row-major [key][d] (first: the Q tile)
    __shared__ __align__(16) T Vt[kD * kLdV];          // V tile, transposed [d][key]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tg = lane & 3;
    const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kMmaRows;
    const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
    const T* Q = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh;
    const T* K = static_cast<const T*>(p.k.ptr) + b * p.k.sb + hk * p.k.sh;
    const T* V = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh;

    // Q tile -> shared -> A fragments (rows warp*16 + g and + 8, k-step ks).
    for (int c = tid; c < kMmaRows * kChunks; c += kMmaThreads) {
        const int r = c / kChunks, d = (c % kChunks) * 8;
        *reinterpret_cast<uint4*>(Ks + r * kLd + d) = load8(Q, p.q.st, q0 + r, p.Tq, d, p.Dh, p.vec);
    }
    __syncthreads();
    uint32_t qa[kD / 16][4];
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
        const T* base = Ks + (warp * 16 + g) * kLd + ks * 16 + tg * 2;
        qa[ks][0] = ld_shared_u32(base);
        qa[ks][1] = ld_shared_u32(base + 8 * kLd);
        qa[ks][2] = ld_shared_u32(base + 8);
        qa[ks][3] = ld_shared_u32(base + 8 * kLd + 8);
    }

    // With kPrefetch the next K/V tile is fetched into registers while the current one is
    // multiplied (kD = 64: 32 more registers); for kD = 128 that would spill, so the tile is
    // copied straight to shared memory, one chunk at a time.
    constexpr bool kPrefetch = kD <= 64;
    uint4 kreg[kPrefetch ? kPer : 1], vreg[kPrefetch ? kPer : 1];
    auto fetch = [&](int64_t k0) {
        if constexpr (kPrefetch) {
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int c = tid + i * kMmaThreads;
                kreg[i] = load8(K, p.k.st, k0 + c / kChunks, p.Tk, (c % kChunks) * 8, p.Dh, p.vec);
                vreg[i] = load8(V, p.v.st, k0 + c % kMmaCols, p.Tk, (c / kMmaCols) * 8, p.Dv, p.vec);  // key fastest
            }
        }
    };
    auto store_k = [&](int c, uint4 chunk) {
        *reinterpret_cast<uint4*>(Ks + (c / kChunks) * kLd + (c % kChunks) * 8) = chunk;
    };
    auto store_v = [&](int c, uint4 chunk) {  // transposed; consecutive lanes: consecutive keys, distinct banks
        const int r = c % kMmaCols, d = (c / kMmaCols) * 8;
        const T* e = reinterpret_cast<const T*>(&chunk);
#pragma unroll
        for (int j = 0; j < 8; ++j) Vt[(d + j) * kLdV + r] = e[j];
    };

    float o[kD / 8][4];
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float m[2] = {kNegInf, kNegInf}, l[2] = {0.f, 0.f};
    const int64_t rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    const int64_t end = kv_end(p, q0, kMmaRows);
    const float scale_log2 = p.scale * kLog2e;

    if constexpr (kPrefetch) {
        if (end > 0) fetch(0);
    }
    for (int64_t k0 = 0; k0 < end; k0 += kMmaCols) {
        __syncthreads();  // Q fragments read / previous tile consumed
        if constexpr (kPrefetch) {
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                store_k(tid + i * kMmaThreads, kreg[i]);
                store_v(tid + i * kMmaThreads, vreg[i]);
            }
        } else {
#pragma unroll 1
            for (int c = tid; c < kMmaCols * kChunks; c += kMmaThreads) {
                store_k(c, load8(K, p.k.st, k0 + c / kChunks, p.Tk, (c % kChunks) * 8, p.Dh, p.vec));
                store_v(c, load8(V, p.v.st, k0 + c % kMmaCols, p.Tk, (c / kMmaCols) * 8, p.Dv, p.vec));
            }
        }
        __syncthreads();
        if constexpr (kPrefetch) {
            if (k0 + kMmaCols < end) fetch(k0 + kMmaCols);
        }

        // S = Q K^T for this warp's 16 rows x 64 keys: 8 n-tiles of m16n8.
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < kD / 16; ++ks) {
                const T* kb = Ks + (nt * 8 + g) * kLd + ks * 16 + tg * 2;
                mma16816<T>(s[nt], qa[ks], ld_shared_u32(kb), ld_shared_u32(kb + 8));
            }
        }
        // scale, bias, masks; to the log2 domain.  Element e of n-tile nt: row rows[e >> 1],
        // key k0 + nt*8 + tg*2 + (e & 1).  A tile with every key visible to every row (inside
        // both lengths, left of the causal diagonal, no mask or bias) needs no per-element tests.
        const bool plain = !p.mask && !p.bias && k0 + kMmaCols <= p.Tk && q0 + kMmaRows <= p.Tq &&
                           (!p.causal || k0 + kMmaCols - 1 <= q0 + (p.Tk - p.Tq));
        float tile_max[2] = {kNegInf, kNegInf};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                if (plain) {
                    s[nt][e] *= scale_log2;
                } else {
                    const int64_t row = rows[e >> 1], col = k0 + nt * 8 + tg * 2 + (e & 1);
                    float x = s[nt][e] * p.scale;
                    const bool ok = allowed<T>(p, b, h, row, col);
                    if (ok && p.bias) x += bias_at<T>(p, b, h, row, col);
                    s[nt][e] = ok ? x * kLog2e : kNegInf;
                }
                tile_max[e >> 1] = max_nan(tile_max[e >> 1], s[nt][e]);
            }
        // online softmax per row; the 4 threads of a quad share a row
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float mx = tile_max[rr];
            mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = max_nan(m[rr], mx);
            const float base = m_new == kNegInf ? 0.f : m_new;  // all masked so far: every p is 0
            const float corr = exp2f(m[rr] - base);
            m[rr] = m_new;
            l[rr] *= corr;
#pragma unroll
            for (int dt = 0; dt < kD / 8; ++dt) {
                o[dt][2 * rr] *= corr;
                o[dt][2 * rr + 1] *= corr;
            }
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                s[nt][2 * rr] = exp2f(s[nt][2 * rr] - base);
                s[nt][2 * rr + 1] = exp2f(s[nt][2 * rr + 1] - base);
                l[rr] += s[nt][2 * rr] + s[nt][2 * rr + 1];
            }
        }
        // O += P V: k-step kk covers keys kk*16..+15 = n-tiles 2kk, 2kk+1 of S.
#pragma unroll
        for (int kk = 0; kk < kMmaCols / 16; ++kk) {
            const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < kD / 8; ++dt) {
                const T* vb = Vt + (dt * 8 + g) * kLdV + kk * 16 + tg * 2;
                mma16816<T>(o[dt], pa, ld_shared_u32(vb), ld_shared_u32(vb + 8));
            }
        }
    }

    T* out = static_cast<T*>(p.out) + (b * p.Hq + h) * p.Tq * p.Dv;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        float total = l[rr];
        total += __shfl_xor_sync(0xffffffffu, total, 1);
        total += __shfl_xor_sync(0xffffffffu, total, 2);
        const float inv = 1.f / total;
        const int64_t row = rows[rr];
        if (row >= p.Tq) continue;
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = dt * 8 + tg * 2 + e;
                if (col < p.Dv) out[row * p.Dv + col] = from_float<T>(finish_row(o[dt][2 * rr + e], total, inv));
            }
    }
}

template <class T, int kD>
void launch_mma(const AttnProblem& p, cudaStream_t stream) {
    const dim3 grid(grid_dim((p.Tq + kMmaRows - 1) / kMmaRows, INT32_MAX, "attention Tq"),
                    grid_dim(p.Hq, 65535, "attention heads"), grid_dim(p.B, 65535, "attention batch"));
    attention_mma<T, kD><<<grid, kMmaThreads, 0, stream>>>(p);
    check_launch("attention_mma");
}

}  // namespace

}  // namespace pyworkloads::cuda
