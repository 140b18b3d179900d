// Batched matrix multiply on the GPU: C[z] = A[z] @ B[z], np.matmul semantics (broadcast batch).
//
// Every version reads A [M, K] and B [K, N] through a row stride (lda, ldb) with unit column
// stride, finds the batch offsets of grid slice z from the broadcast batch shape, accumulates in
// float32 and writes C [batch, M, N] contiguous in the input dtype.
//
// v1 naive       one thread per output element, a K-long dot product straight from global
//                memory.  Each A and B element is re-read M or N times: memory bound, ~1-3 % of
//                peak.  Kept as the readable definition (algo="naive").
// v2 tiled       (all dtypes, the FP32 path) a 256-thread block owns a 128x128 tile of C and
//                walks K in steps of 8.  Each step stages A[128x8] (transposed, so a thread reads
//                a column of A as a float4) and B[8x128] in shared memory -- every element loaded
//                from DRAM is then used 128 times -- and each thread keeps an 8x8 block of C in
//                registers (register blocking: 16 FMAs per 4 shared-memory loads).  The next
//                K-step is fetched into registers while the current one is multiplied (float4
//                loads where rows are 16-byte aligned), and shared memory is double-buffered, so
//                there is one __syncthreads per step.
// v3 tensorcore  (float16 / bfloat16 only) the same 128x128 block tile, K steps of 32, each of
//                the 8 warps owns 64x32 of C as 4x2 WMMA 16x16x16 fragments accumulated in
//                float32.  Tiles are copied global->shared with cp.async (Ampere+) into a
//                three-slot ring, so the copies of steps k+1 and k+2 overlap the MMAs of step k
//                (one barrier per step); rows that are not 16-byte aligned fall back to element
//                loads.  The accumulators are staged
//                through shared memory per fragment for a bounds-checked, rounded store.
//                Kept as the readable tensor-core version (algo="tensorcore").
// v4 mma         (float16 / bfloat16, the default for them off Hopper) the tensor cores driven the way the
//                fast libraries do on Ampere/Ada/Hopper without wgmma: a 256-thread block owns a
//                128x256 tile of C, each of its 8 warps 64x64 (4x8 mma.sync m16n8k16 tiles, 128
//                FP32 accumulators per thread), so every element a warp loads from shared memory
//                feeds 4-8 MMAs.  Fragments come from shared memory by ldmatrix.x4 (one
//                instruction per 16x16 operand; .trans turns B's row-major [k][n] rows into the
//                column operand), with row pitches of 80 and 528 bytes so the 8 rows of each
//                ldmatrix phase fall in 8 different bank groups.  K steps of 32 stream through a
//                3-stage (sm_89: 80 KiB) or 4-stage (sm_80/90: 106 KiB) cp.async ring.  Blocks are
//                rasterised in groups of 8 M-tiles so concurrently running blocks share A and B
//                strips in L2, and C leaves as rounded 4-byte pairs.
//                dev/cuda/emulate_matmul_mma.py replays its lane/address bookkeeping in NumPy.
// v5 wgmma       (float16 / bfloat16 on Hopper, sm_90a builds) Hopper's
//                warpgroup MMA: a 128-thread warpgroup issues one asynchronous
//                wgmma.m64n256k16 that reads both operands straight from shared memory (no
//                ldmatrix, no operand registers) at about twice mma.sync's rate.  A 256-thread
//                block (2 warpgroups) owns a 128x256 tile of C, each warpgroup 64x256 in 128 FP32
//                accumulators per thread.  K steps of 64 (one 128-byte row per operand row)
//                stream through a 4-stage cp.async ring (192 KiB) laid out in the 128-byte swizzle
//                wgmma's descriptors describe (chunk c of row r at c ^ (r % 8): conflict-free
//                without padding).  wgmma wants both operands K-major, so B [K, N] is first
//                transposed into a [N, K] scratch copy (2 K N elements of extra traffic, ~5 % at
//                4096^3).  Rows that are not 16-byte aligned, and GPUs or builds without sm_90a,
//                run v4 (same results).  dev/cuda/emulate_matmul_wgmma.py replays the
//                swizzled stores against the descriptor's addressing and the fragment layout.
//                algo="wgmma_overlap" keeps one K step's wgmma batch in flight across the next
//                barrier (loads 2 steps ahead instead of 3); algo="wgmma_direct" does that too and
//                skips the transpose, reading B's row-major tiles through an MN-major descriptor
//                (imm-trans-b); algo="wgmma_tma" feeds that kernel with the Tensor Memory
//                Accelerator and mbarriers instead of cp.async and __syncthreads (one matrix per
//                call, or a batch that folds into one, else wgmma_direct); algo="wgmma_ws" splits
//                that into a producer warpgroup (TMA) and two consumer warpgroups (wgmma), with
//                setmaxnreg moving registers to the consumers, in a persistent grid of one block
//                per SM (the same problems, else v5), and algo="wgmma_ws_kmajor" runs it on v5's
//                transposed, K-major B; algo="wgmma_ws_mc" / "wgmma_ws_kmajor_mc" run those two on
//                CTA pairs (clusters) that share B's tile, each CTA loading half of it and the TMA
//                multicasting it into both.  On the H200 (bench_cuda, 4096^3 bf16) wgmma_tma ran at
//                89 % of cuBLAS, wgmma_ws 85 %, wgmma_ws_mc 84 %, the K-major pair 66-67 %,
//                wgmma_overlap 54 %, wgmma_direct 50 % and v5 47 %: auto on fp16/bf16 is
//                wgmma_tma (with its fallbacks: wgmma_direct for batches that do not fold, the
//                cp.async transposing kernel for B rows that are not 16-byte aligned, v4 off Hopper).
#include <cuda.h>   // CUtensorMap and its enums (the encoder is fetched at run time: no libcuda link)
#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "device_utils.cuh"
#include "ptx.cuh"
#include "wgmma.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

// The algorithm whose kernel the calling thread's last matmul launched ("" before any, or when the
// last call launched nothing): what auto and the fallbacks actually chose.
thread_local const char* g_last_kernel = "";
void note_kernel(const char* algo) { g_last_kernel = algo; }

__device__ __forceinline__ void batch_offsets(const MatmulProblem& p, int64_t z, int64_t& oa, int64_t& ob) {
    oa = 0;
    ob = 0;
    for (int d = p.batch_ndim - 1; d >= 0; --d) {
        const int64_t i = z % p.batch_shape[d];
        z /= p.batch_shape[d];
        oa += i * p.batch_stride_a[d];
        ob += i * p.batch_stride_b[d];
    }
}

// ---- v1 ---------------------------------------------------------------------------------------
constexpr int kNaiveTile = 16;

template <class T>
__global__ void matmul_naive(MatmulProblem p) {
    const int64_t col = int64_t(blockIdx.x) * kNaiveTile + threadIdx.x;
    const int64_t row = int64_t(blockIdx.y) * kNaiveTile + threadIdx.y;
    if (row >= p.M || col >= p.N) return;
    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa + row * p.lda;
        const T* B = static_cast<const T*>(p.b) + ob + col;
        float acc = 0.f;
        for (int64_t k = 0; k < p.K; ++k) acc += to_float(A[k]) * to_float(B[k * p.ldb]);
        static_cast<T*>(p.c)[(z * p.M + row) * p.N + col] = from_float<T>(acc);
    }
}

// ---- v2 ---------------------------------------------------------------------------------------
constexpr int kBM = 128, kBN = 128, kBK = 8, kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads, 2) matmul_tiled(MatmulProblem p) {
    // +4 floats per row of the transposed A tile: the two loader halves (k and k+4) then land in
    // different banks, and rows stay 16-byte aligned for the float4 reads.
    __shared__ __align__(16) float As[2][kBK][kBM + 4];
    __shared__ __align__(16) float Bs[2][kBK][kBN];
    const int tid = threadIdx.x;
    const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
    const int ar = tid >> 1, ac = (tid & 1) * 4;      // loader: A row ar, k columns ac..ac+3
    const int br = tid >> 5, bc = (tid & 31) * 4;     // loader: B row br, columns bc..bc+3
    const int ty = tid >> 4, tx = tid & 15;           // this thread's C rows {ty*4+i, 64+ty*4+i}, cols likewise
    const int64_t ktiles = (p.K + kBK - 1) / kBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* B = static_cast<const T*>(p.b) + ob;
        float ra[4], rb[4];
        // This thread's loader rows, fixed for the whole K loop (few live 64-bit values: the
        // 8x8 accumulators need the registers).
        const T* a_src = A + (m0 + ar) * p.lda + ac;  // + k0
        const T* b_src = B + int64_t(br) * p.ldb + n0 + bc;   // + k0 * ldb
        const bool a_ok = m0 + ar < p.M;
        const int64_t b_left = p.N - (n0 + bc);       // columns of this thread's 4 inside B
        auto fetch = [&](int64_t k0) {
            const int64_t a_left = a_ok ? p.K - (k0 + ac) : 0;   // k columns inside A
            const bool b_ok = k0 + br < p.K;
            const T* a = a_src + k0;
            const T* b = b_src + k0 * p.ldb;
            if constexpr (std::is_same_v<T, float>) {  // one 16-byte load where the 4 lie inside and aligned
                if (p.a_vec && a_left >= 4) {
                    const float4 v = *reinterpret_cast<const float4*>(a);
                    ra[0] = v.x, ra[1] = v.y, ra[2] = v.z, ra[3] = v.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i) ra[i] = i < a_left ? a[i] : 0.f;
                }
                if (p.b_vec && b_ok && b_left >= 4) {
                    const float4 v = *reinterpret_cast<const float4*>(b);
                    rb[0] = v.x, rb[1] = v.y, rb[2] = v.z, rb[3] = v.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i) rb[i] = (b_ok && i < b_left) ? b[i] : 0.f;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) ra[i] = i < a_left ? to_float(a[i]) : 0.f;
#pragma unroll
                for (int i = 0; i < 4; ++i) rb[i] = (b_ok && i < b_left) ? to_float(b[i]) : 0.f;
            }
        };
        auto stash = [&](int s) {
#pragma unroll
            for (int i = 0; i < 4; ++i) As[s][ac + i][ar] = ra[i];
            *reinterpret_cast<float4*>(&Bs[s][br][bc]) = make_float4(rb[0], rb[1], rb[2], rb[3]);
        };

        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

        if (ktiles > 0) {
            fetch(0);
            stash(0);
        }
        __syncthreads();
        for (int64_t t = 0; t < ktiles; ++t) {
            const int s = int(t & 1);
            if (t + 1 < ktiles) fetch((t + 1) * kBK);    // in flight while we multiply
#pragma unroll 2           // fully unrolled, the hoisted loads spill past 128 registers
            for (int k = 0; k < kBK; ++k) {
                const float4 a0 = *reinterpret_cast<const float4*>(&As[s][k][ty * 4]);
                const float4 a1 = *reinterpret_cast<const float4*>(&As[s][k][64 + ty * 4]);
                const float4 b0 = *reinterpret_cast<const float4*>(&Bs[s][k][tx * 4]);
                const float4 b1 = *reinterpret_cast<const float4*>(&Bs[s][k][64 + tx * 4]);
                const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            if (t + 1 < ktiles) stash(s ^ 1);            // stage s^1 was last read before the previous sync
            __syncthreads();
        }

        T* C = static_cast<T*>(p.c) + z * p.M * p.N;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int64_t r = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
            if (r >= p.M) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int64_t c = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
                if (c < p.N) C[r * p.N + c] = from_float<T>(acc[i][j]);
            }
        }
    }
}

// ---- v3 ---------------------------------------------------------------------------------------
constexpr int kTcBK = 32;
constexpr int kTcLdA = kTcBK + 8;          // shared row pitches (halves): 16-byte aligned rows, and
constexpr int kTcLdB = kBN + 8;            // the +8 skews rows across banks for the fragment loads
constexpr int kTcStageA = kBM * kTcLdA;
constexpr int kTcStageB = kTcBK * kTcLdB;
constexpr int kTcStages = 3;               // ring of K-steps in flight (cp.async groups)
constexpr size_t kTcSmemBytes = size_t(kTcStages) * (kTcStageA + kTcStageB) * 2;   // 56 KiB: opt-in

// One 8-element chunk of a tile row by cp.async to shared address dst: the first `left` elements
// (clamped to 0..8) are read from src -- a 16-byte aligned address -- the hardware zero-fills the
// rest; `safe` is any valid address, used when nothing is read.
template <class T>
__device__ __forceinline__ void cp_async_chunk(uint32_t dst, const T* src, const T* safe, int64_t left) {
    const int bytes = int(left <= 0 ? 0 : left < 8 ? left : 8) * int(sizeof(T));
    cp_async16(dst, bytes ? src : safe, bytes);
}

// The same for any row: cp.async when rows are 16-byte aligned (vec), element by element otherwise.
template <class T>
__device__ __forceinline__ void copy_chunk(T* dst, const T* src, const T* safe, int64_t left, bool vec) {
    if (vec) {
        cp_async_chunk(smem_addr(dst), src, safe, left);
    } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = e < left ? src[e] : from_float<T>(0.f);
    }
}

template <class T>
__global__ void __launch_bounds__(kThreads, 2) matmul_tensorcore(MatmulProblem p) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char tc_smem[];   // kTcStages x (A tile, B tile)
    T* smem = reinterpret_cast<T*>(tc_smem);
    T* As = smem;
    T* Bs = smem + kTcStages * kTcStageA;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;          // warp tile: rows wm*64.., cols wn*32..
    const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
    const int64_t ktiles = (p.K + kTcBK - 1) / kTcBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* B = static_cast<const T*>(p.b) + ob;
        // This thread's chunks: A rows a_row and a_row + 64 at column a_col of the K-step; B rows
        // b_row and b_row + 16 of the K-step at column b_col.
        const int a_row = tid >> 2, a_col = (tid & 3) * 8, b_row = tid >> 4, b_col = (tid & 15) * 8;
        const T* a_src = A + (m0 + a_row) * p.lda + a_col;
        const bool a_in[2] = {m0 + a_row < p.M, m0 + a_row + 64 < p.M};
        const T* b_src = B + n0 + b_col;
        const int64_t b_left = p.N - (n0 + b_col);
        auto load_tile = [&](int64_t t) {              // K-step t into its ring slot t % kTcStages
            const int s = int(t % kTcStages);
            const int64_t k0 = t * kTcBK;
#pragma unroll
            for (int i = 0; i < 2; ++i)
                copy_chunk(As + s * kTcStageA + (a_row + 64 * i) * kTcLdA + a_col, a_src + 64 * i * p.lda + k0, A,
                           a_in[i] ? p.K - (k0 + a_col) : 0, p.a_vec);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int64_t k = k0 + b_row + 16 * i;
                copy_chunk(Bs + s * kTcStageB + (b_row + 16 * i) * kTcLdB + b_col, b_src + k * p.ldb, B,
                           k < p.K ? b_left : 0, p.b_vec);
            }
        };

        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

        // Prologue: steps 0 .. kTcStages-2 in flight, one commit group each (possibly empty).
#pragma unroll
        for (int t = 0; t < kTcStages - 1; ++t) {
            if (t < ktiles) load_tile(t);
            cp_async_commit();
        }
        for (int64_t t = 0; t < ktiles; ++t) {
            cp_async_wait<kTcStages - 2>();            // step t's group has landed (for this thread) ...
            __syncthreads();                           // ... for every thread; and step t-1 is consumed
            if (t + kTcStages - 1 < ktiles) load_tile(t + kTcStages - 1);   // refills step t-1's slot
            cp_async_commit();
            const T* as = As + int(t % kTcStages) * kTcStageA;
            const T* bs = Bs + int(t % kTcStages) * kTcStageB;
#pragma unroll 1                                   // unrolled, the bf16 version spills past 128 registers
            for (int kk = 0; kk < kTcBK; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[4];
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
#pragma unroll
                for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(fa[i], as + (wm * 64 + i * 16) * kTcLdA + kk, kTcLdA);
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + kk * kTcLdB + wn * 32 + j * 16, kTcLdB);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
            }
        }
        cp_async_wait<0>();
        __syncthreads();                               // all tiles consumed: the ring becomes scratch

        // Epilogue: each warp rounds its fragments through a private 16x16 float scratch.
        float* scratch = reinterpret_cast<float*>(smem) + warp * 256;
        T* C = static_cast<T*>(p.c) + z * p.M * p.N;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
                __syncwarp();
                for (int e = lane; e < 256; e += 32) {
                    const int64_t r = m0 + wm * 64 + i * 16 + (e >> 4), c = n0 + wn * 32 + j * 16 + (e & 15);
                    if (r < p.M && c < p.N) C[r * p.N + c] = from_float<T>(scratch[e]);
                }
                __syncwarp();
            }
        __syncthreads();                               // scratch aliases stage 0 of the next z
    }
}

static_assert(8 * 256 * sizeof(float) <= kTcSmemBytes, "epilogue scratch must fit the tiles");

// ---- v4 ---------------------------------------------------------------------------------------
// mma.sync m16n8k16 fed by ldmatrix, a 128x256 block tile and a 3- or 4-deep cp.async ring.
constexpr int kMmaBM = 128, kMmaBN = 256, kMmaBK = 32, kMmaThreads = 256;
constexpr int kMmaLdA = kMmaBK + 8;        // 80-byte rows: 8 rows of an ldmatrix phase hit 8 bank groups
constexpr int kMmaLdB = kMmaBN + 8;        // 528-byte rows: likewise (33 16-byte units, odd)
constexpr int kMmaStageA = kMmaBM * kMmaLdA;
constexpr int kMmaStageB = kMmaBK * kMmaLdB;
constexpr int kMmaGroupM = 8;              // L2 rasterisation: 8 M-tiles share each B column strip
constexpr size_t mma_smem_bytes(int stages) { return size_t(stages) * (kMmaStageA + kMmaStageB) * 2; }

// The block's tile (tm, tn) from its linear index: column-major inside groups of kMmaGroupM
// M-tiles, so the blocks resident at one time read a few A row strips and B column strips that
// stay in L2 (each A strip is reused by every tn of the group, each B strip by kMmaGroupM tiles).
__device__ __forceinline__ void mma_tile_of(int64_t id, int64_t tiles_m, int64_t tiles_n, int64_t& tm, int64_t& tn) {
    const int64_t per_group = int64_t(kMmaGroupM) * tiles_n;
    const int64_t first_m = (id / per_group) * kMmaGroupM;
    const int64_t rows = tiles_m - first_m < kMmaGroupM ? tiles_m - first_m : kMmaGroupM;
    tm = first_m + (id % per_group) % rows;
    tn = (id % per_group) / rows;
}

// The first row and column of C this block owns: tile mma_tile_of(blockIdx.x) of kMmaBM x kMmaBN
// (v5 uses the same block tile).
__device__ __forceinline__ void block_origin(const MatmulProblem& p, int64_t& m0, int64_t& n0) {
    int64_t tm, tn;
    mma_tile_of(blockIdx.x, (p.M + kMmaBM - 1) / kMmaBM, (p.N + kMmaBN - 1) / kMmaBN, tm, tn);
    m0 = tm * kMmaBM;
    n0 = tn * kMmaBN;
}

template <class T, int kStages>
__global__ void __launch_bounds__(kMmaThreads, 1) matmul_mma(MatmulProblem p, bool c_pairs) {
    extern __shared__ __align__(128) unsigned char mma_smem[];   // kStages x A tiles, then kStages x B tiles
    T* As = reinterpret_cast<T*>(mma_smem);
    T* Bs = As + kStages * kMmaStageA;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tg = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;          // warp tile: rows wm*64 .. +63, cols wn*64 .. +63
    int64_t m0, n0;
    block_origin(p, m0, n0);
    const int64_t ktiles = (p.K + kMmaBK - 1) / kMmaBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* B = static_cast<const T*>(p.b) + ob;
        // Loader chunks (8 elements = 16 bytes): A chunk c = tid + 256 i (i < 2) is row c / 4,
        // columns 8 (c % 4) of the K-step; B chunk c = tid + 256 i (i < 4) is K-row c / 32,
        // columns 8 (c % 32).  Consecutive threads read consecutive 16 bytes of a row.
        auto load_tile = [&](int64_t t) {
            const int s = int(t % kStages);
            const int64_t k0 = t * kMmaBK;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int c = tid + kMmaThreads * i, r = c >> 2, col = (c & 3) * 8;
                const int64_t row = m0 + r;
                copy_chunk(As + s * kMmaStageA + r * kMmaLdA + col, A + row * p.lda + k0 + col, A,
                           row < p.M ? p.K - (k0 + col) : 0, p.a_vec);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = tid + kMmaThreads * i, r = c >> 5, col = (c & 31) * 8;
                const int64_t k = k0 + r;
                copy_chunk(Bs + s * kMmaStageB + r * kMmaLdB + col, B + k * p.ldb + n0 + col, B,
                           k < p.K ? p.N - (n0 + col) : 0, p.b_vec);
            }
        };

        float acc[4][8][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

        // This lane's ldmatrix row addresses, relative to a stage: A rows wm*64 + 16i + (lane % 16)
        // at k offset 8 (lane / 16) give the four 8x8 quarters of a 16x16 A fragment in register
        // order (a0: rows 0-7/k 0-7, a1: rows 8-15, a2: k 8-15, a3: both); B K-rows lane % 16 at
        // column wn*64 + 16j + 8 (lane / 16), transposed, give b0/b1 of n-tiles 2j and 2j + 1.
        const int a_off = (wm * 64 + (lane & 15)) * kMmaLdA + (lane >> 4) * 8;
        const int b_off = (lane & 15) * kMmaLdB + wn * 64 + (lane >> 4) * 8;

#pragma unroll
        for (int t = 0; t < kStages - 1; ++t) {       // prologue: steps 0 .. kStages-2 in flight
            if (t < ktiles) load_tile(t);
            cp_async_commit();
        }
        for (int64_t t = 0; t < ktiles; ++t) {
            cp_async_wait<kStages - 2>();              // step t has landed for this thread ...
            __syncthreads();                           // ... and for all; step t-1's slot is free
            if (t + kStages - 1 < ktiles) load_tile(t + kStages - 1);
            cp_async_commit();
            const T* as = As + int(t % kStages) * kMmaStageA + a_off;
            const T* bs = Bs + int(t % kStages) * kMmaStageB + b_off;
#pragma unroll
            for (int kk = 0; kk < kMmaBK; kk += 16) {
                uint32_t af[4][4], bf[8][2];
#pragma unroll
                for (int i = 0; i < 4; ++i) ldmatrix_x4(af[i], as + i * 16 * kMmaLdA + kk);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    uint32_t r[4];
                    ldmatrix_x4_trans(r, bs + kk * kMmaLdB + j * 16);
                    bf[2 * j][0] = r[0];
                    bf[2 * j][1] = r[1];
                    bf[2 * j + 1][0] = r[2];
                    bf[2 * j + 1][1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) mma16816<T>(acc[i][j], af[i], bf[j][0], bf[j][1]);
            }
        }
        cp_async_wait<0>();
        __syncthreads();                               // the next z reuses the ring

        // Epilogue: accumulator e of (i, j) is C row wm*64 + 16i + g (+8 for e >= 2), column
        // wn*64 + 8j + 2tg (+1 for odd e); the two columns go out as one 4-byte pair when C's
        // rows allow it.
        T* C = static_cast<T*>(p.c) + z * p.M * p.N;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int64_t r = m0 + wm * 64 + i * 16 + g + half * 8;
                if (r >= p.M) continue;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int64_t c = n0 + wn * 64 + j * 8 + tg * 2;
                    const float lo = acc[i][j][2 * half], hi = acc[i][j][2 * half + 1];
                    if (c_pairs && c + 1 < p.N) {
                        *reinterpret_cast<uint32_t*>(C + r * p.N + c) = pack2<T>(lo, hi);
                    } else {
                        if (c < p.N) C[r * p.N + c] = from_float<T>(lo);
                        if (c + 1 < p.N) C[r * p.N + c + 1] = from_float<T>(hi);
                    }
                }
            }
    }
}

template <class T, int kStages>
void launch_mma(const MatmulProblem& p, cudaStream_t stream) {
    const int64_t tiles = ((p.M + kMmaBM - 1) / kMmaBM) * ((p.N + kMmaBN - 1) / kMmaBN);
    const dim3 grid(grid_dim(tiles, INT32_MAX, "matmul M x N"), 1, static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
    const size_t bytes = mma_smem_bytes(kStages);
    check(cudaFuncSetAttribute(matmul_mma<T, kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "matmul_mma shared memory opt-in");
    // C pairs are 4-byte stores: N even keeps every (row, even column) pair aligned if C is
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    matmul_mma<T, kStages><<<grid, kMmaThreads, bytes, stream>>>(p, c_pairs);
    check_launch("matmul_mma");
    note_kernel("mma");
}

// ---- v5 ---------------------------------------------------------------------------------------
// wgmma.m64n256k16 from 128-byte-swizzled shared memory (wgmma.cuh), B transposed to K-major.
constexpr int kWgBM = 128, kWgBN = 256, kWgBK = 64, kWgThreads = 256, kWgStages = 4;
constexpr int kWgStageA = kWgBM * kWgBK * 2, kWgStageB = kWgBN * kWgBK * 2;   // bytes per ring slot
constexpr size_t kWgSmemBytes = size_t(kWgStages) * (kWgStageA + kWgStageB) + 1024;   // + alignment slack
static_assert(kWgBM == kMmaBM && kWgBN == kMmaBN, "v5 reuses v4's block rasterisation");

// Whether this module's code for the running device has the wgmma kernel (an sm_90a cubin): read
// once per device with cudaMemcpyFromSymbol, which reads the copy the driver loaded.
#if defined(PYW_HAS_WGMMA)
__device__ int g_wgmma_compiled = 1;
#else
__device__ int g_wgmma_compiled = 0;
#endif

#if defined(PYW_HAS_WGMMA)
constexpr uint32_t kWgAtomN = kWgBK * 128;   // MN-major B tile: bytes from one 64-wide n-atom to the next

// A warpgroup's 64x256 accumulator tile to C [M, N] (row-major, dtype T): d[4 j + e] is row
// r0 + 8 (e / 2), column c0 + 8 j + e % 2, with r0 = its first row + 16 warp + lane / 4 and
// c0 = its first column + 2 (lane % 4); each column pair leaves as one 4-byte store when C's rows
// allow (c_pairs), element by element at the right edge.
template <class T>
__device__ __forceinline__ void store_wgmma_tile(T* C, const float (&d)[128], int64_t M, int64_t N, int64_t r0, int64_t c0,
                                                 bool c_pairs) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = r0 + half * 8;
        if (r >= M) continue;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int64_t c = c0 + j * 8;
            const float lo = d[4 * j + 2 * half], hi = d[4 * j + 2 * half + 1];
            if (c_pairs && c + 1 < N) {
                *reinterpret_cast<uint32_t*>(C + r * N + c) = pack2<T>(lo, hi);
            } else {
                if (c < N) C[r * N + c] = from_float<T>(lo);
                if (c + 1 < N) C[r * N + c + 1] = from_float<T>(hi);
            }
        }
    }
}

// The byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swizzle128(int row, int chunk) {
    return uint32_t(row) * 128u + (uint32_t(chunk ^ (row & 7)) << 4);
}
#endif

// bt[z][n][k] = B[z][k][n] for k < K, zero for K <= k < kp (kp = K rounded up to 8, so every row
// of bt is whole 16-byte chunks); z runs over the distinct B matrices (1 when B is broadcast).
template <class T>
__global__ void matmul_transpose_b(MatmulProblem p, T* bt, int64_t kp, int64_t nbt) {
    __shared__ T tile[32][34];
    const int tx = threadIdx.x, ty = threadIdx.y;                 // 32 x 8 threads
    const int64_t k0 = int64_t(blockIdx.x) * 32, n0 = int64_t(blockIdx.y) * 32;
    for (int64_t z = blockIdx.z; z < nbt; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* B = static_cast<const T*>(p.b) + ob;
#pragma unroll
        for (int i = 0; i < 4; ++i) {                              // coalesced along n
            const int64_t k = k0 + ty + 8 * i, n = n0 + tx;
            tile[ty + 8 * i][tx] = k < p.K && n < p.N ? B[k * p.ldb + n] : from_float<T>(0.f);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i) {                              // coalesced along k
            const int64_t n = n0 + ty + 8 * i, k = k0 + tx;
            if (n < p.N && k < kp) bt[z * p.N * kp + n * kp + k] = tile[tx][ty + 8 * i];
        }
        __syncthreads();
    }
}

// kInFlight 0: each K step's wgmma batch is waited for before the next barrier (verified on an H200).
// kInFlight 1 (algo="wgmma_overlap", NOT yet run on a GPU): the batch of step t stays in flight
// while step t+1 is waited for and issued, so the tensor cores are not idle across the barrier; the
// loads then run 2 steps ahead instead of 3, because slot (t-1) % 4 may still be read by batch t-1.
// kDirectB (algo="wgmma_direct", with kInFlight 1; NOT yet run on a GPU): no transpose -- B's
// row-major [K, N] tile goes to shared memory as it lies, as 4 n-atoms of [64 k][64 n] in the
// MN-major 128B-swizzled layout, and the wgmmas read it with imm-trans-b = 1 (wgmma.cuh).
template <class T, int kInFlight, bool kDirectB>
__global__ void __launch_bounds__(kWgThreads, 1) matmul_wgmma(MatmulProblem p, const T* bt, int64_t kp, int64_t bt_stride,
                                                               bool c_pairs) {
    static_assert(kInFlight == 0 || kInFlight == 1, "one batch in flight at most");
#if defined(PYW_HAS_WGMMA)
    constexpr int kAhead = kWgStages - 1 - kInFlight;   // steps loaded ahead of the one being multiplied
    extern __shared__ unsigned char wg_smem[];
    const uint32_t base = (smem_addr(wg_smem) + 1023u) & ~1023u;   // swizzle atoms are 1024-byte aligned
    const uint32_t a_smem = base, b_smem = base + kWgStages * kWgStageA;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    int64_t m0, n0;
    block_origin(p, m0, n0);
    const int64_t ktiles = (p.K + kWgBK - 1) / kWgBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* Bt = bt + (bt_stride ? z * bt_stride : 0);          // K-major B^T (unused when kDirectB)
        const T* B = static_cast<const T*>(p.b) + ob;                 // row-major B (kDirectB)
        // Chunk c = tid + 256 i of a slot: row c / 8, 16-byte chunk c % 8 of that row's 64 k values
        // (A: 4 chunks per thread, 128 rows; Bt: 8 per thread, 256 rows).  8 consecutive threads
        // fill one 128-byte row, i.e. 8 distinct bank groups after the swizzle.
        auto load_tile = [&](int64_t t) {
            const int s = int(t % kWgStages);
            const int64_t k0 = t * kWgBK;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = tid + kWgThreads * i, r = c >> 3, ch = c & 7;
                const int64_t row = m0 + r, col = k0 + ch * 8;
                cp_async_chunk(a_smem + s * kWgStageA + swizzle128(r, ch), A + row * p.lda + col, A,
                               row < p.M ? p.K - col : 0);
            }
            if constexpr (kDirectB) {
                // chunk c = tid + 256 i: k-row c / 32 of the step, 8 n-values 8 (c % 32) -> n-atom
                // (c % 32) / 8, chunk (c % 8) ^ (k % 8) of that atom's 128-byte k-row.
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int c = tid + kWgThreads * i, r = c >> 5, c8 = c & 31;
                    const int64_t k = k0 + r, col = n0 + c8 * 8;
                    cp_async_chunk(b_smem + s * kWgStageB + (c8 >> 3) * kWgAtomN + swizzle128(r, c8 & 7),
                                   B + k * p.ldb + col, B, k < p.K ? p.N - col : 0);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int c = tid + kWgThreads * i, r = c >> 3, ch = c & 7;
                    const int64_t n = n0 + r, col = k0 + ch * 8;
                    const bool inside = n < p.N && col < kp;          // kp % 8 == 0: whole chunks
                    cp_async16(b_smem + s * kWgStageB + swizzle128(r, ch), inside ? Bt + n * kp + col : Bt, inside ? 16 : 0);
                }
            }
        };

        float d[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.f;

#pragma unroll
        for (int t = 0; t < kAhead; ++t) {            // one commit group per step, possibly empty
            if (t < ktiles) load_tile(t);
            cp_async_commit();
        }
        for (int64_t t = 0; t < ktiles; ++t) {
            cp_async_wait<kAhead - 1>();               // step t has landed for this thread ...
            fence_proxy_async_shared();                // ... is visible to wgmma's (async-proxy) reads ...
            __syncthreads();                           // ... for every thread; batch t-1-kInFlight is done
            if (t + kAhead < ktiles) load_tile(t + kAhead);   // into the slot batch t-1-kInFlight read
            cp_async_commit();
            const int s = int(t % kWgStages);
            const uint32_t sa = a_smem + s * kWgStageA + wg * 64 * 128;   // this warpgroup's 64 rows
            const uint32_t sb = b_smem + s * kWgStageB;
            wgmma_fence_operands(d);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kWgBK / 16; ++kk) {  // 16 k: 32 bytes along a K-major row, 2 k-groups MN-major
                if constexpr (kDirectB)
                    wgmma_m64n256k16<T, 1>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 2048, kWgAtomN, 1024));
                else
                    wgmma_m64n256k16<T, 0>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 32));
            }
            wgmma_commit();
            wgmma_wait<kInFlight>();
            wgmma_fence_operands(d);
        }
        wgmma_wait<0>();                               // the accumulators are final
        wgmma_fence_operands(d);
        cp_async_wait<0>();
        __syncthreads();                               // the next z reuses the ring

        store_wgmma_tile(static_cast<T*>(p.c) + z * p.M * p.N, d, p.M, p.N, m0 + wg * 64 + warp * 16 + (lane >> 2),
                         n0 + (lane & 3) * 2, c_pairs);
    }
#else
    __trap();                                          // never launched: wgmma_available() is false
#endif
}

#if defined(PYW_HAS_WGMMA)
// The shared-memory ring of the TMA kernels: kWgStages A slots then kWgStages B slots from the
// first 1024-byte boundary of the dynamic shared memory (TMA's 128-byte swizzle works in 1024-byte
// atoms), and the barriers full[0..S) then empty[0..S) in `bars` (2 S words).  Thread 0 initialises
// full[s] for 1 arrival (the producer's arrive.expect_tx, plus the bytes) and empty[s] for 2 per
// CTA of the cluster (one per consumer warpgroup that reads slot s's data); every thread of the
// block -- of the cluster, when kCluster > 1 -- must call it (it ends in a barrier).
struct TmaRing {
    uint32_t a_smem, b_smem, full0, empty0;
};
template <int kCluster = 1>
__device__ __forceinline__ TmaRing tma_ring(unsigned char* dynamic_smem, uint64_t* bars) {
    const uint32_t base = (smem_addr(dynamic_smem) + 1023u) & ~1023u;
    const TmaRing r{base, base + kWgStages * kWgStageA, smem_addr(bars), smem_addr(bars) + 8 * kWgStages};
    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < kWgStages; ++s) {
            mbar_init(r.full0 + 8 * s, 1);
            mbar_init(r.empty0 + 8 * s, 2 * kCluster);
        }
        fence_mbarrier_init();
    }
    if constexpr (kCluster > 1)
        cluster_sync();                                // the peers' barriers exist before anything reaches them
    else
        __syncthreads();
    return r;
}
#endif

// ---- v5 with TMA (algo="wgmma_tma"; NOT yet run on a GPU) -------------------------------------
// The same tiles, shared-memory layouts and wgmmas as wgmma_direct, but fed by the Tensor Memory
// Accelerator: thread 0 alone issues one bulk tensor copy for A's 128x64 tile and four for B's
// four 64x64 n-atoms (the TMA writes the 128-byte swizzle itself, zero-filling past the matrix
// edges), and mbarriers replace __syncthreads: full[s] completes when slot s's bytes have landed,
// empty[s] when both warpgroups' wgmmas have finished reading it.  No thread spends issue slots on
// address arithmetic or cp.async, and a warpgroup waits only for its own data.
template <class T>
__global__ void __launch_bounds__(kWgThreads, 1) matmul_wgmma_tma(const __grid_constant__ CUtensorMap tma_a,
                                                                   const __grid_constant__ CUtensorMap tma_b,
                                                                   MatmulProblem p, bool c_pairs) {
#if defined(PYW_HAS_WGMMA)
    extern __shared__ unsigned char wg_smem[];
    __shared__ __align__(8) uint64_t bars[2 * kWgStages];
    const TmaRing ring = tma_ring(wg_smem, bars);
    const uint32_t a_smem = ring.a_smem, b_smem = ring.b_smem, full0 = ring.full0, empty0 = ring.empty0;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    int64_t m0, n0;
    block_origin(p, m0, n0);
    const int64_t ktiles = (p.K + kWgBK - 1) / kWgBK;
    auto issue = [&](int64_t t) {                      // thread 0: step t into slot t % S
        const int s = int(t % kWgStages);
        const uint32_t full = full0 + 8 * s;
        mbar_arrive_expect_tx(full, kWgStageA + kWgStageB);
        tma_load_2d(a_smem + s * kWgStageA, &tma_a, int32_t(t * kWgBK), int32_t(m0), full);
#pragma unroll
        for (int j = 0; j < 4; ++j)
            tma_load_2d(b_smem + s * kWgStageB + j * kWgAtomN, &tma_b, int32_t(n0 + 64 * j), int32_t(t * kWgBK), full);
    };
    if (tid == 0)
        for (int64_t t = 0; t < kWgStages && t < ktiles; ++t) issue(t);   // every slot starts free

    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    for (int64_t t = 0; t < ktiles; ++t) {
        const int s = int(t % kWgStages);
        mbar_wait(full0 + 8 * s, uint32_t((t / kWgStages) & 1));   // the (t / S)-th fill of slot s
        const uint32_t sa = a_smem + s * kWgStageA + wg * 64 * 128, sb = b_smem + s * kWgStageB;
        wgmma_fence_operands(d);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kWgBK / 16; ++kk)
            wgmma_m64n256k16<T, 1>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 2048, kWgAtomN, 1024));
        wgmma_commit();
        wgmma_wait<1>();                               // step t-1's batch is done (step t's in flight)
        wgmma_fence_operands(d);
        if (t >= 1) {
            const int sp = int((t - 1) % kWgStages);
            if ((tid & 127) == 0) mbar_arrive(empty0 + 8 * sp);   // this warpgroup no longer reads slot sp
            if (tid == 0 && t - 1 + kWgStages < ktiles) {
                mbar_wait(empty0 + 8 * sp, uint32_t(((t - 1) / kWgStages) & 1));   // nor does the other one
                issue(t - 1 + kWgStages);
            }
            __syncwarp();                              // warp 0 reconverges before the next (aligned) wgmma
        }
    }
    wgmma_wait<0>();
    wgmma_fence_operands(d);

    store_wgmma_tile(static_cast<T*>(p.c), d, p.M, p.N, m0 + wg * 64 + warp * 16 + (lane >> 2), n0 + (lane & 3) * 2,
                     c_pairs);                         // batch 1 only (the launcher checks)
#else
    __trap();                                          // never launched: wgmma_available() is false
#endif
}

// cuTensorMapEncodeTiled from the driver (null when the driver has none).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                   const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiledFn encode_tiled() {
    static const EncodeTiledFn fn = [] {
        void* f = nullptr;
        cudaDriverEntryPointQueryResult found{};
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) != cudaSuccess ||
            found != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
        return reinterpret_cast<EncodeTiledFn>(f);
    }();
    return fn;
}

// A row-major [outer, inner] matrix (row stride row_bytes) read in boxes of box_outer x box_inner
// elements with the 128-byte swizzle; past the edges the TMA fills zeros.
template <class T>
CUtensorMap tensor_map_2d(const void* ptr, int64_t inner, int64_t outer, int64_t row_bytes, uint32_t box_inner,
                          uint32_t box_outer) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(outer)};
    const cuuint64_t strides[1] = {cuuint64_t(row_bytes)};
    const cuuint32_t box[2] = {box_inner, box_outer}, elem_strides[2] = {1, 1};
    const CUresult r = encode_tiled()(&map, std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                                      2, const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) throw std::runtime_error("matmul: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(int(r)));
    return map;
}

// Whether v5-TMA takes this problem: one matrix (no batch), aligned rows, sizes the 32-bit TMA
// coordinates can address, and a driver with the encoder.
bool tma_fits(const MatmulProblem& p) {
    constexpr int64_t kLimit = (int64_t(1) << 31) - 512;   // tile origins past the last tile (a pair's idle half) too
    return p.batch == 1 && p.a_vec && p.b_vec && p.K > 0 && p.M < kLimit && p.N < kLimit && p.K < kLimit &&
           encode_tiled() != nullptr;
}

template <class T>
void launch_wgmma_tma(const MatmulProblem& p, cudaStream_t stream) {
    const int64_t es = sizeof(T);
    const CUtensorMap ta = tensor_map_2d<T>(p.a, p.K, p.M, p.lda * es, kWgBK, kWgBM);   // A [M, K]: 64 k x 128 rows
    const CUtensorMap tb = tensor_map_2d<T>(p.b, p.N, p.K, p.ldb * es, 64, kWgBK);      // B [K, N]: 64 n x 64 k (one n-atom)
    check(cudaFuncSetAttribute(matmul_wgmma_tma<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmemBytes)),
          "matmul_wgmma_tma shared memory opt-in");
    const int64_t tiles = ((p.M + kWgBM - 1) / kWgBM) * ((p.N + kWgBN - 1) / kWgBN);
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    matmul_wgmma_tma<T><<<grid_dim(tiles, INT32_MAX, "matmul M x N"), kWgThreads, kWgSmemBytes, stream>>>(ta, tb, p, c_pairs);
    check_launch("matmul_wgmma_tma");
    note_kernel("wgmma_tma");
}

// A batched problem as one matrix where that is the same computation: B shared by every batch
// (all its batch strides 0) and A's batches lying one after another at M rows of lda (z's offset
// z M lda), so the rows of all batches form one [batch M, K] matrix -- and C, [batch, M, N]
// contiguous, is [batch M, N].  The models' x @ W.T with x [B, T, D] is such a problem.  Returns
// false (p unchanged) otherwise.
bool fold_batch(MatmulProblem& p) {
    if (p.batch <= 1) return p.batch == 1;
    int64_t want = p.M * p.lda;                    // stride of the innermost batch dimension
    for (int d = p.batch_ndim - 1; d >= 0; --d) {
        if (p.batch_stride_b[d] != 0 && p.batch_shape[d] != 1) return false;
        if (p.batch_shape[d] != 1 && p.batch_stride_a[d] != want) return false;
        want *= p.batch_shape[d];
    }
    p.M *= p.batch;
    p.batch = 1;
    p.batch_ndim = 0;
    return true;
}

// ---- v5 warp-specialised and persistent (algo="wgmma_ws"; NOT yet run on a GPU) --------------
// wgmma_tma's tiles, shared-memory layouts, TMA boxes and barriers, arranged as the fast Hopper
// GEMMs are (CUTLASS's warp-specialised "cooperative" kernels): three warpgroups with separate
// jobs.  Warpgroup 0 is the producer: it hands most of its registers back (setmaxnreg 40) and one
// of its threads issues the TMA loads, waiting only for a slot to be free, so it runs up to 4 K
// steps ahead -- across tile boundaries.  Warpgroups 1 and 2 are the consumers (setmaxnreg 232):
// each multiplies 64x256 of the block's 128x256 tile, frees a slot as soon as the batch that read
// it has finished, and at the end of a tile stores C from registers while the producer is already
// filling the ring with the next tile.  The grid is one block per SM and block b takes tiles b,
// b + grid, ... (mma_tile_of's grouped order): persistent, so no tile waits for a block launch and
// every tile's prologue overlaps the previous tile's epilogue.  full[s]/empty[s] as in wgmma_tma;
// the producer waits for empty[s]'s phase (g / S - 1) of its step g (parity (g / S + 1) % 2: the
// first S waits pass on fresh barriers), the consumers for full[s]'s phase g / S.
// kCluster 2 (algo="wgmma_ws_mc" / "wgmma_ws_kmajor_mc"): CTA pairs (a thread-block cluster) on
// vertically adjacent tiles that share B's tile: each CTA's producer loads its A and half of B,
// multicast into both CTAs, so every B byte crosses from L2 once per pair (32 KiB instead of 48
// per CTA and step).  full[s] still expects all 48 KiB (half of it completed by the peer's TMA);
// empty[s] counts the 4 consumers of the pair (a consumer releases a slot in both CTAs, since both
// producers write into it); a producer stays until its empty barriers have seen the peer's last
// releases, so no arrival reaches a CTA that has exited.
// kKMajorB (algo="wgmma_ws_kmajor"): B is first transposed into a K-major scratch copy, as v5 does,
// and each step loads it as one [256 n][64 k] box -- the TMA's 128-byte swizzle of it is v5's
// verified shared-memory layout, read through v5's K-major descriptors -- instead of four MN-major
// n-atoms (wgmma_direct's layout, not yet verified on a GPU): the same kernel with one unverified
// layout fewer, for ~5 % more traffic at 4096^3.
constexpr int kWsThreads = 384, kWsProducerRegs = 40, kWsConsumerRegs = 232;
static_assert(kWsProducerRegs * 128 + kWsConsumerRegs * 256 <= (65536 / kWsThreads) / 8 * 8 * kWsThreads,
              "the consumers' registers come from what the producer hands back");

template <class T, bool kKMajorB, int kCluster>
__global__ void __launch_bounds__(kWsThreads, 1) matmul_wgmma_ws(const __grid_constant__ CUtensorMap tma_a,
                                                                  const __grid_constant__ CUtensorMap tma_b,
                                                                  MatmulProblem p, bool c_pairs) {
    static_assert(kCluster == 1 || kCluster == 2, "one CTA, or a pair sharing B");
#if defined(PYW_HAS_WGMMA)
    extern __shared__ unsigned char wg_smem[];
    __shared__ __align__(8) uint64_t bars[2 * kWgStages];
    const TmaRing ring = tma_ring<kCluster>(wg_smem, bars);   // the last block-wide barrier: the producer returns early
    const uint32_t a_smem = ring.a_smem, b_smem = ring.b_smem, full0 = ring.full0, empty0 = ring.empty0;
    const int tid = threadIdx.x, wg = tid >> 7;
    // Work units: kCluster M-tiles sharing one N-tile (one per CTA of the cluster, rank r taking
    // M-tile kCluster um + r; past the last M-tile it multiplies the TMA's zeros and stores nothing),
    // unit u = first, first + stride, ... in mma_tile_of's grouped order.
    const uint32_t rank = kCluster > 1 ? cluster_ctarank() : 0;
    const int64_t first = kCluster > 1 ? int64_t(cluster_id_x()) : int64_t(blockIdx.x);
    const int64_t stride = kCluster > 1 ? int64_t(cluster_count_x()) : int64_t(gridDim.x);
    const int64_t tiles_m = (p.M + kWgBM - 1) / kWgBM, tiles_n = (p.N + kWgBN - 1) / kWgBN;
    const int64_t units_m = (tiles_m + kCluster - 1) / kCluster, units = units_m * tiles_n;
    const int64_t ktiles = (p.K + kWgBK - 1) / kWgBK;

    if (wg == 0) {                                     // ---- producer
        setmaxnreg_dec<kWsProducerRegs>();
        if (tid == 0) {
            int64_t g = 0;                             // K steps issued by this block so far, over all its tiles
            for (int64_t u = first; u < units; u += stride) {
                int64_t um, tn;
                mma_tile_of(u, units_m, tiles_n, um, tn);
                const int32_t m0 = int32_t((um * kCluster + rank) * kWgBM), n0 = int32_t(tn * kWgBN);
                for (int64_t t = 0; t < ktiles; ++t, ++g) {
                    const int s = int(g % kWgStages);
                    const uint32_t full = full0 + 8 * s, a_dst = a_smem + s * kWgStageA, b_dst = b_smem + s * kWgStageB;
                    const int32_t k0 = int32_t(t * kWgBK);
                    mbar_wait(empty0 + 8 * s, uint32_t(((g / kWgStages) & 1) ^ 1));   // every consumer is done with it
                    mbar_arrive_expect_tx(full, kWgStageA + kWgStageB);   // with kCluster 2, half of B comes from the peer
                    tma_load_2d(a_dst, &tma_a, k0, m0, full);
                    if constexpr (kCluster == 1 && kKMajorB) {
                        tma_load_2d(b_dst, &tma_b, k0, n0, full);          // B^T [256 n][64 k]
                    } else if constexpr (kCluster == 1) {
#pragma unroll
                        for (int j = 0; j < 4; ++j) tma_load_2d(b_dst + j * kWgAtomN, &tma_b, n0 + 64 * j, k0, full);
                    } else if constexpr (kKMajorB) {                     // rows [128 r, 128 r + 128) of B^T's tile, to both
                        tma_load_2d_multicast(b_dst + rank * (kWgStageB / 2), &tma_b, k0, n0 + 128 * int32_t(rank), full, 0x3);
                    } else {                                              // n-atoms 2 r and 2 r + 1, to both
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            const int32_t atom = 2 * int32_t(rank) + j;
                            tma_load_2d_multicast(b_dst + atom * kWgAtomN, &tma_b, n0 + 64 * atom, k0, full, 0x3);
                        }
                    }
                }
            }
            if constexpr (kCluster > 1) {
                // Stay until the peer's consumers have released their last steps: their arrivals
                // land on this CTA's empty barriers, which must outlive them.  Step h's release
                // completes phase h / S of empty[h % S].
                for (int64_t h = g - kWgStages < 0 ? 0 : g - kWgStages; h < g; ++h)
                    mbar_wait(empty0 + 8 * int(h % kWgStages), uint32_t((h / kWgStages) & 1));
            }
        }
        return;
    }

    setmaxnreg_inc<kWsConsumerRegs>();                 // ---- consumers
    const int cw = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31;
    const bool leader = (tid & 127) == 0;              // arrives on empty[] for its warpgroup
    // step h's slot is free again here (and, with kCluster 2, in the peer, whose producer also
    // writes half of B into it)
    auto release = [&](int64_t h) {
        if (!leader) return;
        const uint32_t bar = empty0 + 8 * int(h % kWgStages);
        if constexpr (kCluster > 1) {
#pragma unroll
            for (uint32_t r = 0; r < uint32_t(kCluster); ++r) mbar_arrive_cluster(bar, r);
        } else {
            mbar_arrive(bar);
        }
    };
    int64_t g = 0;                                     // the same step count as the producer's
    float d[128];
    for (int64_t u = first; u < units; u += stride) {
        int64_t um, tn;
        mma_tile_of(u, units_m, tiles_n, um, tn);
        const int64_t tm = um * kCluster + rank;
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.f;
        for (int64_t t = 0; t < ktiles; ++t, ++g) {
            const int s = int(g % kWgStages);
            mbar_wait(full0 + 8 * s, uint32_t((g / kWgStages) & 1));   // step g's bytes have landed
            const uint32_t sa = a_smem + s * kWgStageA + cw * 64 * 128, sb = b_smem + s * kWgStageB;
            wgmma_fence_operands(d);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kWgBK / 16; ++kk) {
                if constexpr (kKMajorB)
                    wgmma_m64n256k16<T, 0>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 32));
                else
                    wgmma_m64n256k16<T, 1>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 2048, kWgAtomN, 1024));
            }
            wgmma_commit();
            wgmma_wait<1>();                           // step g-1's batch is done (step g's in flight)
            wgmma_fence_operands(d);
            if (t >= 1) release(g - 1);
            __syncwarp();                              // warp 0 reconverges before the next (aligned) wgmma
        }
        wgmma_wait<0>();
        wgmma_fence_operands(d);
        release(g - 1);                                // the tile's last step (ktiles >= 1)
        __syncwarp();
        store_wgmma_tile(static_cast<T*>(p.c), d, p.M, p.N, tm * kWgBM + cw * 64 + warp * 16 + (lane >> 2),
                         tn * kWgBN + (lane & 3) * 2, c_pairs);
    }
#else
    __trap();                                          // never launched: wgmma_available() is false
#endif
}

// One launch of matmul_wgmma_ws: a persistent grid of one block per SM (with kCluster 2: as many
// co-resident pairs as the device can hold), the algorithm's name recorded for matmul_last_kernel.
template <class T, bool kKMajorB, int kCluster>
void launch_ws_kernel(const CUtensorMap& ta, const CUtensorMap& tb, const MatmulProblem& p, bool c_pairs,
                      cudaStream_t stream, const char* name) {
    auto kernel = matmul_wgmma_ws<T, kKMajorB, kCluster>;
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmemBytes)),
          "matmul_wgmma_ws shared memory opt-in");
    const int64_t units = ((p.M + kWgBM * kCluster - 1) / (kWgBM * kCluster)) * ((p.N + kWgBN - 1) / kWgBN);
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1] = {};
    cfg.blockDim = dim3(kWsThreads);
    cfg.dynamicSmemBytes = kWgSmemBytes;
    cfg.stream = stream;
    int64_t groups = std::max(1, sm_count() / kCluster);   // co-resident clusters (blocks when kCluster is 1)
    if constexpr (kCluster > 1) {
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = kCluster;
        attr[0].val.clusterDim.y = 1;
        attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cfg.gridDim = dim3(unsigned(kCluster * std::min<int64_t>(units, groups)));
        int fit = 0;                                   // GPCs need not split into whole pairs
        if (cudaOccupancyMaxActiveClusters(&fit, kernel, &cfg) == cudaSuccess && fit > 0)
            groups = std::min<int64_t>(groups, fit);
        else
            cudaGetLastError();
    }
    cfg.gridDim = dim3(unsigned(kCluster * std::min<int64_t>(units, groups)));
    check(cudaLaunchKernelEx(&cfg, kernel, ta, tb, p, c_pairs), "launching matmul_wgmma_ws");
    check_launch("matmul_wgmma_ws");
    note_kernel(name);
}

template <class T, bool kKMajorB, int kCluster>
void launch_wgmma_ws(const MatmulProblem& p, cudaStream_t stream, const char* name) {
    const int64_t es = sizeof(T);
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    const CUtensorMap ta = tensor_map_2d<T>(p.a, p.K, p.M, p.lda * es, kWgBK, kWgBM);   // A [M, K]: 64 k x 128 rows
    if constexpr (!kKMajorB) {
        // B [K, N] in n-atoms of 64 n x 64 k (4 per step, 2 per CTA with a pair)
        const CUtensorMap tb = tensor_map_2d<T>(p.b, p.N, p.K, p.ldb * es, 64, kWgBK);
        return launch_ws_kernel<T, false, kCluster>(ta, tb, p, c_pairs, stream, name);
    }
    // B^T [N, kp] (kp = K rounded up to 8, zero-padded: whole 16-byte rows) by v5's transpose; one matrix here
    const int64_t kp = (p.K + 7) / 8 * 8;
    void* bt = nullptr;
    check(cudaMallocAsync(&bt, size_t(p.N) * size_t(kp) * sizeof(T), stream), "matmul: B^T scratch");
    try {
        const dim3 tgrid(grid_dim((kp + 31) / 32, INT32_MAX, "matmul K"), grid_dim((p.N + 31) / 32, 65535, "matmul N"), 1);
        matmul_transpose_b<T><<<tgrid, dim3(32, 8), 0, stream>>>(p, static_cast<T*>(bt), kp, 1);
        check_launch("matmul_transpose_b");
        // B^T [N, kp] in boxes of 64 k x 256 n (128 n per CTA with a pair)
        const CUtensorMap tb = tensor_map_2d<T>(bt, kp, p.N, kp * es, kWgBK, kWgBN / kCluster);
        launch_ws_kernel<T, true, kCluster>(ta, tb, p, c_pairs, stream, name);
    } catch (...) {
        cudaFreeAsync(bt, stream);
        throw;
    }
    check(cudaFreeAsync(bt, stream), "matmul: freeing the B^T scratch");   // after the kernel, in stream order
}

}  // namespace

// Hopper (compute capability 9.0) with the sm_90a code loaded, unless PYWORKLOADS_NO_WGMMA is set
// (a switch for comparing against v4 and for ruling v5 out when something looks wrong).
bool wgmma_available() {
    static int cached[64] = {};                        // 0 unknown, 1 yes, 2 no
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    if (dev < 0 || dev >= 64) return false;
    if (!cached[dev]) {
        int major = 0, minor = 0, compiled = 0;
        check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "compute capability");
        check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "compute capability");
        const char* off = std::getenv("PYWORKLOADS_NO_WGMMA");
        if (major == 9 && minor == 0 && !(off && *off && std::string(off) != "0"))
            check(cudaMemcpyFromSymbol(&compiled, g_wgmma_compiled, sizeof(int)), "reading g_wgmma_compiled");
        cached[dev] = compiled == 1 ? 1 : 2;
    }
    return cached[dev] == 1;
}

namespace {

template <class T, int kInFlight, bool kDirectB>
void launch_wgmma(const MatmulProblem& p, cudaStream_t stream) {
    check(cudaFuncSetAttribute(matmul_wgmma<T, kInFlight, kDirectB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(kWgSmemBytes)),
          "matmul_wgmma shared memory opt-in");
    const int64_t tiles = ((p.M + kWgBM - 1) / kWgBM) * ((p.N + kWgBN - 1) / kWgBN);
    const dim3 grid(grid_dim(tiles, INT32_MAX, "matmul M x N"), 1, static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    if constexpr (kDirectB) {                          // B as it lies: no scratch, no transpose
        matmul_wgmma<T, kInFlight, true><<<grid, kWgThreads, kWgSmemBytes, stream>>>(p, nullptr, 0, 0, c_pairs);
        check_launch("matmul_wgmma");
        note_kernel("wgmma_direct");
        return;
    }
    const int64_t kp = (p.K + 7) / 8 * 8;
    bool broadcast_b = true;
    for (int d = 0; d < p.batch_ndim; ++d) broadcast_b = broadcast_b && p.batch_stride_b[d] == 0;
    const int64_t nbt = broadcast_b ? 1 : p.batch;
    void* bt = nullptr;
    const size_t bt_bytes = size_t(nbt) * size_t(p.N) * size_t(kp) * sizeof(T);   // 0 when K == 0: no scratch
    if (bt_bytes) check(cudaMallocAsync(&bt, bt_bytes, stream), "matmul: B^T scratch");
    try {
        const dim3 tgrid(grid_dim((kp + 31) / 32, INT32_MAX, "matmul K"), grid_dim((p.N + 31) / 32, 65535, "matmul N"),
                         static_cast<unsigned>(std::min<int64_t>(nbt, 65535)));
        matmul_transpose_b<T><<<tgrid, dim3(32, 8), 0, stream>>>(p, static_cast<T*>(bt), kp, nbt);
        check_launch("matmul_transpose_b");
        matmul_wgmma<T, kInFlight, false><<<grid, kWgThreads, kWgSmemBytes, stream>>>(p, static_cast<const T*>(bt), kp,
                                                                                      broadcast_b ? 0 : p.N * kp, c_pairs);
        check_launch("matmul_wgmma");
        note_kernel(kInFlight ? "wgmma_overlap" : "wgmma");
    } catch (...) {
        if (bt) cudaFreeAsync(bt, stream);
        throw;
    }
    if (bt) check(cudaFreeAsync(bt, stream), "matmul: freeing the B^T scratch");   // after the kernel, in stream order
}

template <class T>
void launch(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream) {
    const unsigned gz = static_cast<unsigned>(std::min<int64_t>(p.batch, 65535));
    if (algo == MatmulAlgo::Naive) {
        const dim3 grid(grid_dim((p.N + kNaiveTile - 1) / kNaiveTile, INT32_MAX, "matmul N"),
                        grid_dim((p.M + kNaiveTile - 1) / kNaiveTile, 65535, "matmul M"), gz);
        matmul_naive<T><<<grid, dim3(kNaiveTile, kNaiveTile), 0, stream>>>(p);
        check_launch("matmul_naive");
        note_kernel("naive");
        return;
    }
    const dim3 grid(grid_dim((p.N + kBN - 1) / kBN, INT32_MAX, "matmul N"),
                    grid_dim((p.M + kBM - 1) / kBM, 65535, "matmul M"), gz);
    if (algo == MatmulAlgo::Tiled) {
        matmul_tiled<T><<<grid, kThreads, 0, stream>>>(p);
        check_launch("matmul_tiled");
        note_kernel("tiled");
        return;
    }
    if constexpr (!std::is_same_v<T, float>) {
        if (is_wgmma(algo)) {
            if (p.a_vec && wgmma_available() && max_optin_smem() >= int(kWgSmemBytes)) {
                if (algo == MatmulAlgo::Wgmma) return launch_wgmma<T, 0, false>(p, stream);
                if (algo >= MatmulAlgo::WgmmaTma) {    // the TMA kernels
                    MatmulProblem q = p;               // one matrix where the batch folds into M
                    if (fold_batch(q) && tma_fits(q)) {
                        switch (algo) {
                            case MatmulAlgo::WgmmaWs: return launch_wgmma_ws<T, false, 1>(q, stream, "wgmma_ws");
                            case MatmulAlgo::WgmmaWsKMajor: return launch_wgmma_ws<T, true, 1>(q, stream, "wgmma_ws_kmajor");
                            case MatmulAlgo::WgmmaWsMc: return launch_wgmma_ws<T, false, 2>(q, stream, "wgmma_ws_mc");
                            case MatmulAlgo::WgmmaWsKMajorMc:
                                return launch_wgmma_ws<T, true, 2>(q, stream, "wgmma_ws_kmajor_mc");
                            default: return launch_wgmma_tma<T>(q, stream);
                        }
                    }
                    if (algo != MatmulAlgo::WgmmaTma) return launch_wgmma<T, 0, false>(p, stream);   // verified v5
                }
                if (algo == MatmulAlgo::WgmmaOverlap || !p.b_vec) return launch_wgmma<T, 1, false>(p, stream);
                return launch_wgmma<T, 1, true>(p, stream);   // direct B needs 16-byte aligned B rows too
            }
            algo = MatmulAlgo::Mma;                    // rows not 16-byte aligned: v4 (same results)
        }
        if (algo == MatmulAlgo::Mma) {                 // 4 stages where the device allows 106 KiB (sm_80, sm_90)
            if (max_optin_smem() >= int(mma_smem_bytes(4))) return launch_mma<T, 4>(p, stream);
            return launch_mma<T, 3>(p, stream);
        }
        check(cudaFuncSetAttribute(matmul_tensorcore<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kTcSmemBytes)),
              "matmul_tensorcore shared memory opt-in");
        matmul_tensorcore<T><<<grid, kThreads, kTcSmemBytes, stream>>>(p);
        check_launch("matmul_tensorcore");
        note_kernel("tensorcore");
        return;
    }
    throw std::invalid_argument("matmul: the tensor-core kernel needs float16 or bfloat16 inputs");
}

}  // namespace

MatmulAlgo matmul_resolve(const MatmulProblem& p, MatmulAlgo requested) {
    if (p.dtype != DType::F32 && p.dtype != DType::F16 && p.dtype != DType::BF16)
        throw std::invalid_argument(std::string("matmul: unsupported dtype ") + dtype_name(p.dtype));
    // WgmmaTma runs the cp.async v5 kernels where the TMA cannot take the problem, and v4 where v5
    // cannot (no sm_90a code for the device, unaligned A rows): the device is only known at launch,
    // and this function must not touch CUDA (it validates before any call).
    if (requested == MatmulAlgo::Auto) return p.dtype == DType::F32 ? MatmulAlgo::Tiled : MatmulAlgo::WgmmaTma;
    const bool tensor_cores = requested == MatmulAlgo::TensorCore || requested == MatmulAlgo::Mma || is_wgmma(requested);
    if (tensor_cores && p.dtype == DType::F32)
        throw std::invalid_argument(std::string("matmul: algo='") + matmul_algo_name(requested) +
                                    "' needs float16 or bfloat16 inputs, got float32");
    return requested;
}

const char* matmul_last_kernel() { return g_last_kernel; }

void matmul_device(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream) {
    g_last_kernel = "";
    algo = matmul_resolve(p, algo);
    if (p.batch == 0 || p.M == 0 || p.N == 0) return;
    switch (p.dtype) {
        case DType::F32: return launch<float>(p, algo, stream);
        case DType::F16: return launch<__half>(p, algo, stream);
        case DType::BF16: return launch<__nv_bfloat16>(p, algo, stream);
        default: throw std::invalid_argument("matmul: unsupported dtype");
    }
}

}  // namespace pyworkloads::cuda
