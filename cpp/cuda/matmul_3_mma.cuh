// Matmul version 3, tensor cores: mma.sync m16n8k16 fed by ldmatrix and a cp.async ring (float16 /
// bfloat16, float32 accumulators).  Over version 2 it moves the multiply onto the tensor cores and
// the loads off the registers: a 256-thread block owns a 128x256 tile of C, each of its 8 warps
// 64x64 (4x8 mma tiles, 128 accumulators a thread), so every element a warp loads from shared memory
// feeds 4-8 MMAs.  Fragments come from shared memory by ldmatrix.x4 (one instruction per 16x16
// operand; .trans turns B's row-major [k][n] rows into the column operand), with row pitches of 80
// and 528 bytes so the 8 rows of each ldmatrix phase fall in 8 different bank groups.  K steps of
// 32 stream global -> shared through a 3-stage (sm_89: 80 KiB) or 4-stage (sm_80/90: 106 KiB)
// cp.async ring that bypasses the registers, one __syncthreads per step.  Blocks are rasterised in
// groups of 8 M-tiles so the blocks running at one time share A and B strips in L2, and C leaves as
// rounded 4-byte pairs.  dev/cuda/emulate_matmul_mma.py replays the lane and address bookkeeping.
// algo="mma"; auto for float16/bfloat16 off Hopper (matmul.cu).
#pragma once
#include "matmul_2_tiled.cuh"
#include "ptx.cuh"

namespace pyworkloads::cuda {

namespace {

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
// (versions 4 and 5 use the same block tile).
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
    const dim3 grid(grid_dim(tiles, INT32_MAX, "matmul M x N"), 1,
                    static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
    const size_t bytes = mma_smem_bytes(kStages);
    check(cudaFuncSetAttribute(matmul_mma<T, kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "matmul_mma shared memory opt-in");
    // C pairs are 4-byte stores: N even keeps every (row, even column) pair aligned if C is
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    matmul_mma<T, kStages><<<grid, kMmaThreads, bytes, stream>>>(p, c_pairs);
    check_launch("matmul_mma");
    note_kernel("mma");
}

}  // namespace

}  // namespace pyworkloads::cuda
