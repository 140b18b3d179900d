// Attention forward on the GPU: out = softmax(scale * q k^T + bias, masked) v, per (batch, head),
// without ever materialising the [Tq, Tk] score matrix (flash attention).
//
// Every version keeps a tile of queries resident, streams the keys and values through shared
// memory one tile at a time, and folds each tile into the output with the online softmax: per
// query row a running max m and denominator l; a new tile with row max m' rescales the partial
// output and l by exp(m - m') before adding its own exp(s - m') terms.  At the end out = o / l,
// and a row that saw no allowed key (l == 0, or NaN from NaN scores) is written as zeros, as the
// NumPy reference does.  Shared by all:
//   * causal, bottom-right aligned: query i sees keys j <= i + (Tk - Tq); key tiles entirely
//     above the diagonal of a query tile are never loaded (tile skipping, ~half the work), and
//     the heaviest query tiles are scheduled first;
//   * grouped-query attention: query head h reads key/value head h / (Hq / Hkv); cross
//     attention is simply Tq != Tk;
//   * bias (additive) and mask (bool, True = attend) are read through broadcast strides over
//     [B, Hq, Tq, Tk] (stride 0 = broadcast), so a [1, 1, 1, Tk] padding mask costs Tk bytes.
//
// v1 simt  (any dtype, head width <= 256) one warp per query row (4 rows per warp, 16 per
//          block).  Each K/V tile of 32 keys is converted to float in shared memory; lane j
//          scores key j, the warp takes the tile max and the exponentials, then lane c
//          accumulates output columns c, c + 32, ... with the probabilities shuffled across the
//          warp.  Plain FP32 FMAs; the output rows stay in registers.
// v2 mma   (float16 / bfloat16, head width <= 128) FlashAttention-2 on tensor cores: a block of
//          4 warps owns 64 query rows (16 per warp); Q fragments stay in registers for the
//          whole pass; S = Q K^T and O += P V use mma.sync m16n8k16 with FP32 accumulation.
//          The S accumulator layout of two adjacent 8-key n-tiles is exactly the A-operand
//          layout of a 16-key k-step, so P goes from the softmax to the second MMA without
//          touching shared memory.  V is stored transposed in shared memory so its B fragments
//          are 32-bit loads; row pitches carry 8 halves of padding, which makes the fragment
//          loads of the 8 row groups fall in distinct banks.  For head widths <= 64 the next K/V
//          tile is loaded into registers during the current tile's MMAs; tiles where every key
//          is visible to every row skip the per-element mask tests.  Softmax runs in the log2 domain
//          (exp2), row statistics are reduced across the 4 threads that share a row.
// v3 mma_async  (float16 / bfloat16, head width <= 128, 16-byte aligned rows) the v2 math, with
//          the data movement of a tuned GEMM:
//          * ldmatrix.  One ldmatrix.x4 instruction reads four 8x8 matrices of 16-bit elements
//            from shared memory: lanes 8i..8i+7 each give the address of one 16-byte row of
//            matrix i, and lane l receives row l/4, columns 2(l%4) and 2(l%4)+1 of every matrix
//            -- exactly one register of an mma fragment.  So Q (A operand: rows lane&15, column
//            (lane>>4)*8) and K (B operand of S = Q K^T: key (lane>>4)*8 + (lane&7), column
//            ((lane>>3)&1)*8) come in with one instruction per 16x16 piece instead of four 32-bit
//            loads.  The .trans form hands out the transposed matrices, which is what the B
//            operand of O += P V needs from V stored as it is in memory, [key][d] (key lane&15,
//            column (lane>>4)*8): V is copied with 16-byte stores, not v2's scalar transposing ones.
//          * cp.async.  K/V tiles go global -> shared with 16-byte cp.async.cg copies that bypass
//            the registers; a copy outside the operand (keys >= Tk, columns >= Dh or Dv) reads
//            nothing and the hardware zero-fills its 16 bytes (src-size 0), so tails need no other
//            code.  Two stages alternate: after the barrier that opens tile j, tile j+1 is issued
//            into the other stage and lands while tile j is multiplied -- one __syncthreads per tile.
//            The Q tile is staged in stage 1 before its first K/V tile arrives (its K and V halves
//            hold 2 x 64 rows), read into registers once, then overwritten.
//          * no bank conflicts.  Rows are padded to kD + 8 halves (144 or 272 bytes), so the 8 rows
//            an ldmatrix phase reads (and the 128 contiguous bytes 8 lanes of cp.async write) start
//            16 bytes apart modulo 128: eight distinct 16-byte bank groups.
//          * block shape.  Head width 64: 4 warps x 32 query rows (two m16 tiles each) = 128 rows
//            per block, 64-key tiles, 36 KiB of shared memory.  Each K or V fragment read from
//            shared memory now feeds two MMAs.  At 16 rows per warp (v2) a warp reads 16 KiB of
//            K/V per 64-key tile for 16 x 64 x 64 x 2 x 2 = 262 kFLOP, 1 byte per 16 FLOP: the
//            128 bytes/clock of shared memory then cap an SM at ~2 kFLOP/clock, no more than its
//            tensor cores do; 32 rows per warp halve the bytes per FLOP.  8 warps x 16 rows would
//            give the same block with twice the shared-memory traffic; 128-key tiles would need 64
//            more registers for S.  S (64) + O (64) + the Q fragments (32) per thread: ptxas
//            (nvcc 13) settles at 252-254 registers without spills, so 2 blocks (8 warps) per SM,
//            the 4-warp, 128-row shape FlashAttention-2 also uses at this width.  Head width 128:
//            O alone is 64 registers per m-tile, so 4 warps x 16 rows = 64 rows per block (68 KiB
//            of shared memory, opt-in above 48 KiB; 2 blocks per SM by registers).
//            Causal: a 128-row tile has its diagonal in two 64-key tiles, ~3 % more work than the
//            triangle at T = 4096; the heaviest query tiles are still scheduled first.
//          * the masked tiles (diagonal, tails, mask, bias) reduce the causal and length tests to
//            one small per-row bound on the column and read mask / bias through per-row pointers,
//            which keeps the 64-bit arithmetic out of the registers the MMAs need.  exp2 is the
//            single MUFU instruction ex2.approx; on the other tiles the scale folds into its FMA.
//          Rows that are not 16-byte aligned, or widths that are not multiples of 8 (p.vec false),
//          run v2.  dev/cuda/emulate_attention_mma_async.py checks the lane bookkeeping,
//          the pipeline and the bank-conflict claim in NumPy.
#include <cmath>
#include <cstdint>

#include "device_utils.cuh"
#include "ptx.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

// Is key `col` allowed for query `row`, and the additive bias there (0 when none)?
template <class T>
__device__ __forceinline__ bool allowed(const AttnProblem& p, int64_t b, int64_t h, int64_t row, int64_t col) {
    if (row >= p.Tq || col >= p.Tk) return false;
    if (p.causal && col > row + (p.Tk - p.Tq)) return false;
    if (p.mask) {
        const int64_t* s = p.mask_stride;
        if (!p.mask[b * s[0] + h * s[1] + row * s[2] + col * s[3]]) return false;
    }
    return true;
}

template <class T>
__device__ __forceinline__ float bias_at(const AttnProblem& p, int64_t b, int64_t h, int64_t row, int64_t col) {
    const int64_t* s = p.bias_stride;
    return to_float(static_cast<const T*>(p.bias)[b * s[0] + h * s[1] + row * s[2] + col * s[3]]);
}

// Key tiles [0, kv_end) can hold an allowed key for query rows [q0, q0 + rows).
__device__ __forceinline__ int64_t kv_end(const AttnProblem& p, int64_t q0, int rows) {
    if (!p.causal) return p.Tk;
    const int64_t last = q0 + rows - 1 + (p.Tk - p.Tq);   // the last row's last visible key
    return last + 1 < p.Tk ? last + 1 : p.Tk;
}

// ---- v1 ---------------------------------------------------------------------------------------
// A block of 4 warps owns 16 query rows, 4 per warp.  For the scores, lane j takes key j of the
// 32-key tile (a full dot product against the broadcast query row; K rows padded by one float so
// the 32 lanes read 32 banks); for the output, lane c takes columns c, c + 32, ... and the
// probabilities are passed along the warp with shuffles.
constexpr int kSimtWarps = 4, kSimtRowsPerWarp = 4, kSimtRows = kSimtWarps * kSimtRowsPerWarp, kSimtKeys = 32;

template <int kD>
constexpr size_t simt_smem_bytes() {
    return (size_t(kSimtRows) * kD + size_t(kSimtKeys) * (kD + 1) + size_t(kSimtKeys) * kD) * sizeof(float);
}

template <class T, int kD>
__global__ void __launch_bounds__(kSimtWarps * 32) attention_simt(AttnProblem p) {
    constexpr int kPer = kD / 32;                  // output columns per lane
    extern __shared__ float smem[];
    float* Qs = smem;                              // [kSimtRows][kD]
    float* Ks = Qs + kSimtRows * kD;               // [kSimtKeys][kD + 1]
    float* Vs = Ks + kSimtKeys * (kD + 1);         // [kSimtKeys][kD]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kSimtRows;   // heavy causal tiles first
    const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
    const T* Q = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh;
    const T* K = static_cast<const T*>(p.k.ptr) + b * p.k.sb + hk * p.k.sh;
    const T* V = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh;

    for (int e = tid; e < kSimtRows * kD; e += kSimtWarps * 32) {
        const int r = e / kD, d = e % kD;
        const int64_t qi = q0 + r;
        Qs[e] = (qi < p.Tq && d < p.Dh) ? to_float(Q[qi * p.q.st + d]) : 0.f;
    }

    float o[kSimtRowsPerWarp][kPer];
    float m[kSimtRowsPerWarp], l[kSimtRowsPerWarp];   // l: this lane's share of the denominator
#pragma unroll
    for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
        m[rr] = kNegInf;
        l[rr] = 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) o[rr][i] = 0.f;
    }
    const int64_t end = kv_end(p, q0, kSimtRows);

    for (int64_t k0 = 0; k0 < end; k0 += kSimtKeys) {
        __syncthreads();                           // the previous tile is consumed (and Qs written)
        for (int e = tid; e < kSimtKeys * kD; e += kSimtWarps * 32) {
            const int j = e / kD, d = e % kD;
            const int64_t kj = k0 + j;
            Ks[j * (kD + 1) + d] = (kj < p.Tk && d < p.Dh) ? to_float(K[kj * p.k.st + d]) : 0.f;
            Vs[e] = (kj < p.Tk && d < p.Dv) ? to_float(V[kj * p.v.st + d]) : 0.f;
        }
        __syncthreads();
        const int64_t col = k0 + lane;
        const float* krow = Ks + lane * (kD + 1);
#pragma unroll
        for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
            const int r = warp * kSimtRowsPerWarp + rr;
            const int64_t row = q0 + r;
            if (row >= p.Tq) continue;             // warp-uniform
            const float* qrow = Qs + r * kD;
            float dot = 0.f;
#pragma unroll 8
            for (int d = 0; d < kD; ++d) dot = fmaf(qrow[d], krow[d], dot);
            float x = dot * p.scale;
            const bool ok = allowed<T>(p, b, h, row, col);
            if (ok && p.bias) x += bias_at<T>(p, b, h, row, col);
            x = ok ? x : kNegInf;
            const float m_new = fmaxf(m[rr], warp_max(x));
            if (m_new == kNegInf) continue;        // nothing allowed yet: o and l stay 0
            const float corr = expf(m[rr] - m_new);
            const float pj = expf(x - m_new);
            l[rr] = l[rr] * corr + pj;
            m[rr] = m_new;
#pragma unroll
            for (int i = 0; i < kPer; ++i) o[rr][i] *= corr;
#pragma unroll 4
            for (int j = 0; j < kSimtKeys; ++j) {
                const float pk = __shfl_sync(0xffffffffu, pj, j);
                const float* vrow = Vs + j * kD + lane;
#pragma unroll
                for (int i = 0; i < kPer; ++i) o[rr][i] = fmaf(pk, vrow[32 * i], o[rr][i]);
            }
        }
    }

#pragma unroll
    for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
        const int64_t row = q0 + warp * kSimtRowsPerWarp + rr;
        if (row >= p.Tq) continue;
        const float total = warp_sum(l[rr]);
        const float inv = total > 0.f ? 1.f / total : 0.f;   // false for NaN too: such rows become zeros
        T* out = static_cast<T*>(p.out) + ((b * p.Hq + h) * p.Tq + row) * p.Dv;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int d = lane + 32 * i;
            if (d < p.Dv) out[d] = from_float<T>(inv != 0.f ? o[rr][i] * inv : 0.f);
        }
    }
}

template <class T, int kD>
void launch_simt(const AttnProblem& p, cudaStream_t stream) {
    constexpr size_t bytes = simt_smem_bytes<kD>();
    auto kernel = attention_simt<T, kD>;
    if (bytes > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
              "attention_simt shared memory opt-in");
    const dim3 grid(grid_dim((p.Tq + kSimtRows - 1) / kSimtRows, INT32_MAX, "attention Tq"),
                    grid_dim(p.Hq, 65535, "attention heads"), grid_dim(p.B, 65535, "attention batch"));
    kernel<<<grid, kSimtWarps * 32, bytes, stream>>>(p);
    check_launch("attention_simt");
}

// ---- v2 ---------------------------------------------------------------------------------------
constexpr int kMmaRows = 64, kMmaCols = 64, kMmaThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t ld_shared_u32(const void* ptr) { return *static_cast<const uint32_t*>(ptr); }

// 8 consecutive elements of row `row` starting at column d (zeros outside [rows, width)), as
// one 16-byte register.
template <class T>
__device__ __forceinline__ uint4 load8(const T* src, int64_t st, int64_t row, int64_t rows, int d, int64_t width, bool vec) {
    if (vec)                       // width % 8 == 0: a chunk is entirely inside or outside
        return (row < rows && d < width) ? *reinterpret_cast<const uint4*>(src + row * st + d) : make_uint4(0u, 0u, 0u, 0u);
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
                vreg[i] = load8(V, p.v.st, k0 + c % kMmaCols, p.Tk, (c / kMmaCols) * 8, p.Dv, p.vec);   // key fastest
            }
        }
    };
    auto store_k = [&](int c, uint4 chunk) {
        *reinterpret_cast<uint4*>(Ks + (c / kChunks) * kLd + (c % kChunks) * 8) = chunk;
    };
    auto store_v = [&](int c, uint4 chunk) {      // transposed; consecutive lanes: consecutive keys, distinct banks
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
        __syncthreads();                               // Q fragments read / previous tile consumed
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
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[nt][e]);
            }
        // online softmax per row; the 4 threads of a quad share a row
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float mx = tile_max[rr];
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[rr], mx);
            const float base = m_new == kNegInf ? 0.f : m_new;   // all masked so far: every p is 0
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
        const float inv = total > 0.f ? 1.f / total : 0.f;   // false for NaN too: zeros
        const int64_t row = rows[rr];
        if (row >= p.Tq) continue;
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = dt * 8 + tg * 2 + e;
                if (col < p.Dv) out[row * p.Dv + col] = from_float<T>(inv != 0.f ? o[dt][2 * rr + e] * inv : 0.f);
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

// ---- v3 ---------------------------------------------------------------------------------------
// Block shape per head width (see the opening comment for the reasons): kWarps warps, each owning
// kMT m-tiles of 16 query rows; K/V tiles of kAsyncCols keys in a ring of kAsyncStages stages.
constexpr int kAsyncCols = 64, kAsyncStages = 2;
template <int kD> struct AsyncShape;
template <> struct AsyncShape<64> { static constexpr int kWarps = 4, kMT = 2; };    // 128 rows, 32 per warp
template <> struct AsyncShape<128> { static constexpr int kWarps = 4, kMT = 1; };   // 64 rows, 16 per warp

template <int kD>
constexpr int async_rows() { return AsyncShape<kD>::kWarps * 16 * AsyncShape<kD>::kMT; }
// Stages x (K tile + V tile), [key][d] with a pitch of kD + 8 halves: 36 KiB (64), 68 KiB (128).
template <int kD>
constexpr size_t async_smem_bytes() { return size_t(kAsyncStages) * 2 * kAsyncCols * (kD + 8) * 2; }

// One MUFU instruction (the library exp2f adds range fix-ups); exp2(-inf) = 0, NaN stays NaN.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Rows [r0, r0 + kN) of a [rows, width] operand (row stride st) -> shared memory at byte address
// dst with a pitch of kLd elements, as 16-byte cp.async chunks; chunks outside the operand read
// nothing and are zero-filled (src-size 0, with the operand's base as a valid dummy address).
// Thread tid copies chunks tid, tid + kThreads, ...: 8 consecutive lanes fill 128 contiguous bytes
// of one row, which fall in distinct bank groups.
template <class T, int kN, int kD, int kThreads>
__device__ __forceinline__ void copy_rows_async(uint32_t dst, const T* src, int64_t st, int64_t r0, int64_t rows,
                                                int64_t width, int tid) {
    constexpr int kLd = kD + 8, kChunks = kD / 8;
    static_assert((kN * kChunks) % kThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < kN * kChunks / kThreads; ++i) {
        const int c = tid + i * kThreads, r = c / kChunks, d = (c % kChunks) * 8;
        const bool inside = r0 + r < rows && d < width;   // width % 8 == 0: a chunk is all in or all out
        cp_async16(dst + uint32_t(r * kLd + d) * uint32_t(sizeof(T)), inside ? src + (r0 + r) * st + d : src,
                   inside ? 16 : 0);
    }
}

template <class T, int kD>
__global__ void __launch_bounds__(AsyncShape<kD>::kWarps * 32) attention_mma_async(AttnProblem p) {
    constexpr int kWarps = AsyncShape<kD>::kWarps, kMT = AsyncShape<kD>::kMT;
    constexpr int kThreads = kWarps * 32, kRows = async_rows<kD>(), kCols = kAsyncCols;
    constexpr int kLd = kD + 8, kTile = kCols * kLd, kStage = 2 * kTile;   // elements
    constexpr uint32_t kEs = sizeof(T);
    static_assert(kRows <= 2 * kCols, "the Q tile is staged in the second K/V stage");
    static_assert(kAsyncStages == 2, "the loop below alternates two stages");
    extern __shared__ __align__(16) unsigned char attn_smem[];             // [stage][K tile, V tile][key][kLd]
    const uint32_t smem0 = smem_addr(attn_smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tg = lane & 3;
    // One linear grid, query tiles slowest: every head's last (for causal, longest) tile is
    // scheduled before any head's second-to-last, so the short tiles fill the final wave instead
    // of long ones trailing behind it.
    const int64_t heads = p.Hq * p.B, tiles = int64_t(gridDim.x) / heads, id = blockIdx.x;
    const int64_t q0 = (tiles - 1 - id / heads) * kRows;
    const int64_t h = (id % heads) % p.Hq, b = (id % heads) / p.Hq, hk = h / (p.Hq / p.Hkv);
    const T* Q = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh;
    const T* K = static_cast<const T*>(p.k.ptr) + b * p.k.sb + hk * p.k.sh;
    const T* V = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh;
    const int64_t end = kv_end(p, q0, kRows);

    // The ldmatrix row each lane addresses (elements from a tile's start):
    //   Q (A operand, x4): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
    //     (rows 8-15, k 8-15) = a0..a3 of m16n8k16: lane -> row lane & 15, column (lane >> 4) * 8.
    //   K (B operand of S = Q K^T, x4): (keys 0-7, d 0-7) = b0 and (keys 0-7, d 8-15) = b1 of one
    //     n-tile, then the same for keys 8-15: lane -> key (lane >> 4) * 8 + (lane & 7), column
    //     ((lane >> 3) & 1) * 8.
    //   V (B operand of O += P V, x4.trans): (keys 0-7, d 0-7) = b0 and (keys 8-15, d 0-7) = b1 of
    //     one 8-column d-tile, then the same for d 8-15: lane -> key lane & 15, column (lane >> 4) * 8.
    const uint32_t q_lane = uint32_t(((warp * kMT * 16) + (lane & 15)) * kLd + (lane >> 4) * 8) * kEs;
    const uint32_t k_lane = uint32_t(((lane >> 4) * 8 + (lane & 7)) * kLd + ((lane >> 3) & 1) * 8) * kEs;
    const uint32_t v_lane = uint32_t((lane & 15) * kLd + (lane >> 4) * 8) * kEs;

    // Prologue: the Q tile into stage 1 (its K and V tiles are contiguous: room for 2 kCols rows),
    // key tile 0 into stage 0; Q -> registers as soon as its group has landed.
    copy_rows_async<T, kRows, kD, kThreads>(smem0 + kStage * kEs, Q, p.q.st, q0, p.Tq, p.Dh, tid);
    cp_async_commit();
    if (end > 0) {
        copy_rows_async<T, kCols, kD, kThreads>(smem0, K, p.k.st, 0, p.Tk, p.Dh, tid);
        copy_rows_async<T, kCols, kD, kThreads>(smem0 + kTile * kEs, V, p.v.st, 0, p.Tk, p.Dv, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    uint32_t qa[kMT][kD / 16][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks)
            ldmatrix_x4(qa[mt][ks], smem0 + kStage * kEs + q_lane + uint32_t(mt * 16 * kLd + ks * 16) * kEs);

    float o[kMT][kD / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    float m[kMT][2], l[kMT][2];
    int64_t rows[kMT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
        m[mt][0] = m[mt][1] = kNegInf;
        l[mt][0] = l[mt][1] = 0.f;
        rows[mt][0] = q0 + warp * kMT * 16 + mt * 16 + g;
        rows[mt][1] = rows[mt][0] + 8;
    }
    const float scale_log2 = p.scale * kLog2e;

    uint32_t stage = 0;
    for (int64_t k0 = 0; k0 < end; k0 += kCols, stage ^= 1u) {
        // Tile k0 has landed (this thread's copies), and after the barrier everyone's copies are
        // visible and every warp is done with the other stage (the previous tile, or Q): refill it
        // with the next tile, which then lands while this one is multiplied.
        cp_async_wait<0>();
        __syncthreads();
        if (k0 + kCols < end) {
            const uint32_t next = smem0 + (stage ^ 1u) * kStage * kEs;
            copy_rows_async<T, kCols, kD, kThreads>(next, K, p.k.st, k0 + kCols, p.Tk, p.Dh, tid);
            copy_rows_async<T, kCols, kD, kThreads>(next + kTile * kEs, V, p.v.st, k0 + kCols, p.Tk, p.Dv, tid);
        }
        cp_async_commit();
        const uint32_t ks_base = smem0 + stage * kStage * kEs, vs_base = ks_base + kTile * kEs;

        // S = Q K^T: kMT x 8 n-tiles of m16n8; one ldmatrix.x4 gives the B fragments of two n-tiles
        // for one k-step, used by all kMT m-tiles.
        float s[kMT][8][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < kD / 16; ++ks)
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                uint32_t kb[4];
                ldmatrix_x4(kb, ks_base + k_lane + uint32_t(np * 16 * kLd + ks * 16) * kEs);
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt) {
                    mma16816<T>(s[mt][2 * np], qa[mt][ks], kb[0], kb[1]);
                    mma16816<T>(s[mt][2 * np + 1], qa[mt][ks], kb[2], kb[3]);
                }
            }

        // scale, bias, masks; to the log2 domain.  Element e of n-tile nt of m-tile mt: row
        // rows[mt][e >> 1], key k0 + nt*8 + tg*2 + (e & 1).  The same rules as allowed() / bias_at(),
        // arranged per row so that few 64-bit values are live: the causal and length limits become
        // one small bound `lim` on the column offset nt*8 + (e & 1) (-1: nothing visible), and
        // mask / bias are read through a per-row pointer.
        // A plain tile (every key visible to every row, no mask or bias, scale > 0) keeps the raw
        // scores: the row max of s times scale*log2(e) is the max of the scaled scores, and the
        // scaling folds into the exponent's FMA below, one instruction fewer per score.
        const bool plain = scale_log2 > 0.f && !p.mask && !p.bias && k0 + kCols <= p.Tk && q0 + kRows <= p.Tq &&
                           (!p.causal || k0 + kCols - 1 <= q0 + (p.Tk - p.Tq));
        const float mul = plain ? scale_log2 : 1.f;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
            float tile_max[2] = {kNegInf, kNegInf};
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                if (plain) {
#pragma unroll
                    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                        for (int j = 0; j < 2; ++j) tile_max[rr] = fmaxf(tile_max[rr], s[mt][nt][2 * rr + j]);
                    continue;
                }
                const int64_t row = rows[mt][rr], col0 = k0 + tg * 2;
                int64_t last = p.Tk - 1;                                  // the row's last visible key
                if (p.causal && row + (p.Tk - p.Tq) < last) last = row + (p.Tk - p.Tq);
                if (row >= p.Tq) last = -1;
                const int64_t rel = last - col0;
                const int lim = rel < -1 ? -1 : rel > kCols ? kCols : int(rel);
                const uint8_t* mrow = p.mask ? p.mask + b * p.mask_stride[0] + h * p.mask_stride[1] + row * p.mask_stride[2] : nullptr;
                const T* brow = p.bias ? static_cast<const T*>(p.bias) + b * p.bias_stride[0] + h * p.bias_stride[1] +
                                             row * p.bias_stride[2]
                                       : nullptr;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int c = nt * 8 + j;                         // column offset from col0
                        float x = s[mt][nt][2 * rr + j] * p.scale;
                        bool ok = c <= lim;
                        if (ok && mrow) ok = mrow[(col0 + c) * p.mask_stride[3]] != 0;
                        if (ok && brow) x += to_float(brow[(col0 + c) * p.bias_stride[3]]);
                        s[mt][nt][2 * rr + j] = ok ? x * kLog2e : kNegInf;
                        tile_max[rr] = fmaxf(tile_max[rr], s[mt][nt][2 * rr + j]);
                    }
            }
            // online softmax per row; the 4 threads of a quad share a row
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                float mx = tile_max[rr];
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2)) * mul;
                const float m_new = fmaxf(m[mt][rr], mx);
                const float base = m_new == kNegInf ? 0.f : m_new;   // all masked so far: every p is 0
                const float corr = fast_exp2(m[mt][rr] - base);
                m[mt][rr] = m_new;
                l[mt][rr] *= corr;
#pragma unroll
                for (int dt = 0; dt < kD / 8; ++dt) {
                    o[mt][dt][2 * rr] *= corr;
                    o[mt][dt][2 * rr + 1] *= corr;
                }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    s[mt][nt][2 * rr] = fast_exp2(fmaf(s[mt][nt][2 * rr], mul, -base));
                    s[mt][nt][2 * rr + 1] = fast_exp2(fmaf(s[mt][nt][2 * rr + 1], mul, -base));
                    l[mt][rr] += s[mt][nt][2 * rr] + s[mt][nt][2 * rr + 1];
                }
            }
        }

        // O += P V: k-step kk covers keys kk*16..+15 = n-tiles 2kk, 2kk+1 of S (the A layout, as in
        // v2); one ldmatrix.x4.trans gives the B fragments of two 8-column d-tiles.
#pragma unroll
        for (int kk = 0; kk < kCols / 16; ++kk) {
            uint32_t pa[kMT][4];
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) {
                pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < kD / 16; ++dp) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, vs_base + v_lane + uint32_t(kk * 16 * kLd + dp * 16) * kEs);
#pragma unroll
                for (int mt = 0; mt < kMT; ++mt) {
                    mma16816<T>(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    mma16816<T>(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
        }
    }
    cp_async_wait<0>();                                // nothing may be in flight at exit

    // out = o / l; a lane holds columns dt*8 + tg*2 and + 1 of its rows: one 32-bit store when the
    // output is 4-byte aligned (Dv is a multiple of 8 here).
    T* out = static_cast<T*>(p.out) + (b * p.Hq + h) * p.Tq * p.Dv;
    const bool pairs = (reinterpret_cast<uintptr_t>(p.out) & 3u) == 0;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float total = l[mt][rr];
            total += __shfl_xor_sync(0xffffffffu, total, 1);
            total += __shfl_xor_sync(0xffffffffu, total, 2);
            const float inv = total > 0.f ? 1.f / total : 0.f;   // false for NaN too: zeros
            const int64_t row = rows[mt][rr];
            if (row >= p.Tq) continue;
#pragma unroll
            for (int dt = 0; dt < kD / 8; ++dt) {
                const int col = dt * 8 + tg * 2;
                if (col >= p.Dv) continue;
                const float lo = inv != 0.f ? o[mt][dt][2 * rr] * inv : 0.f;
                const float hi = inv != 0.f ? o[mt][dt][2 * rr + 1] * inv : 0.f;
                if (pairs) {
                    *reinterpret_cast<uint32_t*>(out + row * p.Dv + col) = pack2<T>(lo, hi);
                } else {
                    out[row * p.Dv + col] = from_float<T>(lo);
                    out[row * p.Dv + col + 1] = from_float<T>(hi);
                }
            }
        }
}

// Needs 16-byte aligned rows and head widths that are multiples of 8 (p.vec) for the cp.async
// chunks, and the shared memory; otherwise v2 runs (same results).
template <class T, int kD>
void launch_mma_async(const AttnProblem& p, cudaStream_t stream) {
    constexpr size_t bytes = async_smem_bytes<kD>();
    if (!p.vec || size_t(max_optin_smem()) < bytes) return launch_mma<T, kD>(p, stream);
    auto kernel = attention_mma_async<T, kD>;
    if (bytes > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
              "attention_mma_async shared memory opt-in");
    constexpr int kRows = async_rows<kD>();
    const int64_t tiles = (p.Tq + kRows - 1) / kRows;
    const unsigned grid = grid_dim(tiles * p.Hq * p.B, INT32_MAX, "attention query tiles x heads x batch");
    kernel<<<grid, AsyncShape<kD>::kWarps * 32, bytes, stream>>>(p);
    check_launch("attention_mma_async");
}

template <class T>
void launch(const AttnProblem& p, AttnAlgo algo, cudaStream_t stream) {
    const int64_t width = p.Dh > p.Dv ? p.Dh : p.Dv;
    if constexpr (!std::is_same_v<T, float>) {
        if (algo == AttnAlgo::MmaAsync) {
            if (width <= 64) return launch_mma_async<T, 64>(p, stream);
            return launch_mma_async<T, 128>(p, stream);
        }
        if (algo == AttnAlgo::Mma) {
            if (width <= 64) return launch_mma<T, 64>(p, stream);
            return launch_mma<T, 128>(p, stream);
        }
    }
    if (width <= 64) return launch_simt<T, 64>(p, stream);
    if (width <= 128) return launch_simt<T, 128>(p, stream);
    return launch_simt<T, 256>(p, stream);
}

}  // namespace

AttnAlgo attention_resolve(const AttnProblem& p, AttnAlgo requested) {
    if (p.dtype != DType::F32 && p.dtype != DType::F16 && p.dtype != DType::BF16)
        throw std::invalid_argument(std::string("attention: unsupported dtype ") + dtype_name(p.dtype));
    const int64_t width = p.Dh > p.Dv ? p.Dh : p.Dv;
    if (width > kMaxHeadDim)
        throw std::invalid_argument("attention: the CUDA kernels support head widths up to " + std::to_string(kMaxHeadDim) +
                                    ", got " + std::to_string(width));
    const bool mma_ok = p.dtype != DType::F32 && width <= 128;
    // Auto: v3 for half types; its launcher runs v2 where p.vec is false (the bindings resolve before
    // they know the alignment, so the choice between v2 and v3 is made at launch).
    if (requested == AttnAlgo::Auto) return mma_ok ? AttnAlgo::MmaAsync : AttnAlgo::Simt;
    if ((requested == AttnAlgo::Mma || requested == AttnAlgo::MmaAsync) && !mma_ok)
        throw std::invalid_argument(std::string("attention: algo='") + (requested == AttnAlgo::Mma ? "mma" : "mma_async") +
                                    "' needs float16/bfloat16 inputs and head widths <= 128");
    return requested;
}

void attention_device(const AttnProblem& p, AttnAlgo algo, cudaStream_t stream) {
    algo = attention_resolve(p, algo);
    if (p.B == 0 || p.Hq == 0 || p.Tq == 0 || p.Dv == 0) return;
    if (p.Hkv <= 0 || p.Hq % p.Hkv != 0) throw std::invalid_argument("attention: Hq must be a multiple of Hkv");
    switch (p.dtype) {
        case DType::F32: return launch<float>(p, algo, stream);
        case DType::F16: return launch<__half>(p, algo, stream);
        case DType::BF16: return launch<__nv_bfloat16>(p, algo, stream);
        default: throw std::invalid_argument("attention: unsupported dtype");
    }
}

}  // namespace pyworkloads::cuda
