// The blocked GEMM of matmul.cpp (its version 2) as an internal interface, for kernels that run the
// same loop nest on a B operand they produce themselves: qmatmul.cpp dequantizes block-quantized
// weights straight into the packed B panels, so prefill over quantized weights runs at the speed of
// the float32 GEMM.  The loop nest, the micro-kernel and the thread grid stay in matmul.cpp; only
// what a caller needs to size its workspace and plug in its own B packing is declared here.
#pragma once

#include "common.h"
#include "simd.h"

namespace pyworkloads {
namespace gemm {

struct Mat {                 // a strided read-only matrix view; element (i, j) = p[i*rs + j*cs]
    const float* p;
    int64_t rs, cs;
};

// The micro-tile: MR rows of A by NR = NV vectors of B's columns (matmul.cpp, section 2b).
#if defined(__AVX512F__)
constexpr int MR = 14, NV = 2;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int MR = 6, NV = 2;
#else
constexpr int MR = 4, NV = 2;
#endif
constexpr int NR = NV * simd::VL;

// Cache blocks.  kalign: K blocks are whole multiples of it (a packer that decodes blocks of 256
// weights along K can only start and stop on a block boundary); 1 for a float B.
struct Blocking {
    int64_t kc = 512, mc = 168, nc = 1536;
    int64_t kalign = 1;
};

// The blocking matmul uses now (`_set_matmul_blocking` changes it).
Blocking current_blocking();

// Fills the packed B panels [q0, q1) (NR columns each) of the kc x nc block of B at row pc, column
// jc: Bp[q*NR*kc + k*NR + j] = B[pc + k, jc + q*NR + j], zero for columns past nc.  Called by every
// thread of the team for its share of the panels, then the team meets at a barrier.
struct PackB {
    void (*fn)(const void* ctx, int64_t pc, int64_t kc, int64_t jc, int64_t nc, int64_t q0, int64_t q1, float* Bp);
    const void* ctx;
};

// pack_b of a float B held as a strided matrix view, for the panels [q0, q1) of its kc x nc block.
void pack_b(int64_t kc, int64_t nc, int64_t q0, int64_t q1, Mat B, float* Bp);

struct GemmPlan {
    int64_t kc, mc, nc;
    int tm, tn;
    size_t ap_floats, bp_floats;
    size_t workspace_floats(int nt) const { return bp_floats + nt * ap_floats; }
};

// The plan of a team of nt threads; plan_gemm(M, N, K, 1, blk) has the largest A block of any team,
// so workspace_floats(nt) of that plan (with its ap_floats as ap_stride) suits any team up to nt.
GemmPlan plan_gemm(int64_t M, int64_t N, int64_t K, int nt, const Blocking& blk);

// C[M x N] (row stride ldc) = A · B, B supplied by `packb`.  Every thread of the enclosing parallel
// region calls it (or one thread, outside any region); ws: the B panels, then one A block of
// ap_stride floats per thread.
void gemm_team(int64_t M, int64_t N, int64_t K, Mat A, const PackB& packb, float* C, int64_t ldc, const Blocking& blk,
               float* ws, size_t ap_stride);

}  // namespace gemm
}  // namespace pyworkloads
