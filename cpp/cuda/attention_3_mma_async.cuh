// Attention version 3, mma_async: version 2's math with the data movement of a tuned GEMM (float16 /
// bfloat16, head widths up to 128, 16-byte aligned rows and widths that are multiples of 8).  Over
// version 2 it reads the fragments with ldmatrix instead of 32-bit loads, streams K/V tiles through
// a two-stage cp.async ring instead of registers, and gives each warp 32 query rows at head width
// 64, so each K or V fragment read from shared memory feeds two MMAs.  In detail:
//   * ldmatrix.  One ldmatrix.x4 instruction reads four 8x8 matrices of 16-bit elements from shared
//     memory: lanes 8i..8i+7 each give the address of one 16-byte row of matrix i, and lane l
//     receives row l/4, columns 2(l%4) and 2(l%4)+1 of every matrix -- exactly one register of an
//     mma fragment.  So Q (A operand: rows lane&15, column (lane>>4)*8) and K (B operand of
//     S = Q K^T: key (lane>>4)*8 + (lane&7), column ((lane>>3)&1)*8) come in with one instruction per
//     16x16 piece instead of four 32-bit loads.  The .trans form hands out the transposed matrices,
//     which is what the B operand of O += P V needs from V stored as it is in memory, [key][d] (key
//     lane&15, column (lane>>4)*8): V is copied with 16-byte stores, not version 2's transposing ones.
//   * cp.async.  K/V tiles go global -> shared with 16-byte cp.async.cg copies that bypass the
//     registers; a copy outside the operand (keys >= Tk, columns >= Dh or Dv) reads nothing and the
//     hardware zero-fills its 16 bytes (src-size 0), so tails need no other code.  Two stages
//     alternate: after the barrier that opens tile j, tile j+1 is issued into the other stage and
//     lands while tile j is multiplied -- one __syncthreads per tile.  The Q tile is staged in stage
//     1 before its first K/V tile arrives (its K and V halves hold 2 x 64 rows), read into registers
//     once, then overwritten.
//   * no bank conflicts.  Rows are padded to kD + 8 halves (144 or 272 bytes), so the 8 rows an
//     ldmatrix phase reads (and the 128 contiguous bytes 8 lanes of cp.async write) start 16 bytes
//     apart modulo 128: eight distinct 16-byte bank groups.
//   * block shape.  Head width 64: 4 warps x 32 query rows (two m16 tiles each) = 128 rows per
//     block, 64-key tiles, 36 KiB of shared memory.  At 16 rows per warp (version 2) a warp reads
//     16 KiB of K/V per 64-key tile for 16 x 64 x 64 x 2 x 2 = 262 kFLOP, 1 byte per 16 FLOP: the 128
//     bytes/clock of shared memory then cap an SM at ~2 kFLOP/clock, no more than its tensor cores
//     do; 32 rows per warp halve the bytes per FLOP.  8 warps x 16 rows would give the same block
//     with twice the shared-memory traffic; 128-key tiles would need 64 more registers for S.
//     S (64) + O (64) + the Q fragments (32) per thread take nearly all 255 registers (without
//     spills), so 2 blocks (8 warps) run per SM, the 4-warp, 128-row shape FlashAttention-2 also
//     uses at this width.  Head width 128: O alone is 64 registers per m-tile, so 4 warps x 16 rows
//     = 64 rows per block (68 KiB of shared memory, opt-in above 48 KiB; 2 blocks per SM by
//     registers).  Causal: a 128-row tile has its diagonal in two 64-key tiles, ~3 % more work than
//     the triangle at T = 4096; the heaviest query tiles are still scheduled first.
//   * the masked tiles (diagonal, tails, mask, bias) reduce the causal and length tests to one small
//     per-row bound on the column and read mask / bias through per-row pointers, which keeps the
//     64-bit arithmetic out of the registers the MMAs need.  exp2 is the single MUFU instruction
//     ex2.approx; on the other tiles the scale folds into its FMA.
// dev/cuda/emulate_attention_mma_async.py checks the lane bookkeeping, the pipeline and the
// bank-conflict claim in NumPy.  algo="mma_async"; auto for float16/bfloat16 (ops_cuda.h).
#pragma once
#include "attention_2_mma.cuh"

namespace pyworkloads::cuda {

namespace {

// Block shape per head width (see the opening comment for the reasons): kWarps warps, each owning
// kMT m-tiles of 16 query rows; K/V tiles of kAsyncCols keys in a ring of kAsyncStages stages.
constexpr int kAsyncCols = 64, kAsyncStages = 2;
template <int kD>
struct AsyncShape;
template <>
struct AsyncShape<64> {
    static constexpr int kWarps = 4, kMT = 2;
};    // 128 rows, 32 per warp
template <>
struct AsyncShape<128> {
    static constexpr int kWarps = 4, kMT = 1;
};   // 64 rows, 16 per warp

template <int kD>
constexpr int async_rows() {
    return AsyncShape<kD>::kWarps * 16 * AsyncShape<kD>::kMT;
}
// Stages x (K tile + V tile), [key][d] with a pitch of kD + 8 halves: 36 KiB (64), 68 KiB (128).
template <int kD>
constexpr size_t async_smem_bytes() {
    return size_t(kAsyncStages) * 2 * kAsyncCols * (kD + 8) * 2;
}

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
                        for (int j = 0; j < 2; ++j) tile_max[rr] = max_nan(tile_max[rr], s[mt][nt][2 * rr + j]);
                    continue;
                }
                const int64_t row = rows[mt][rr], col0 = k0 + tg * 2;
                int64_t last = p.Tk - 1;                                  // the row's last visible key
                if (p.causal && row + (p.Tk - p.Tq) < last) last = row + (p.Tk - p.Tq);
                if (row >= p.Tq) last = -1;
                const int64_t rel = last - col0;
                const int lim = rel < -1 ? -1 : rel > kCols ? kCols : int(rel);
                const uint8_t* mrow =
                    p.mask ? p.mask + b * p.mask_stride[0] + h * p.mask_stride[1] + row * p.mask_stride[2] : nullptr;
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
                        tile_max[rr] = max_nan(tile_max[rr], s[mt][nt][2 * rr + j]);
                    }
            }
            // online softmax per row; the 4 threads of a quad share a row
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                float mx = tile_max[rr];
                mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 2)) * mul;
                const float m_new = max_nan(m[mt][rr], mx);
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
        // version 2); one ldmatrix.x4.trans gives the B fragments of two 8-column d-tiles.
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
            const float inv = 1.f / total;
            const int64_t row = rows[mt][rr];
            if (row >= p.Tq) continue;
#pragma unroll
            for (int dt = 0; dt < kD / 8; ++dt) {
                const int col = dt * 8 + tg * 2;
                if (col >= p.Dv) continue;
                const float lo = finish_row(o[mt][dt][2 * rr], total, inv);
                const float hi = finish_row(o[mt][dt][2 * rr + 1], total, inv);
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
// chunks, and the shared memory; otherwise version 2 runs (same results).
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

}  // namespace

}  // namespace pyworkloads::cuda
