// RMSNorm / LayerNorm on the GPU over the last axis of a contiguous [rows, D] array, statistics
// accumulated in float32 whatever the storage dtype.  The versions, one file each, each opening
// with what it adds over the one before:
//
//   norms_1_block.cuh  1. block  a block per row, scalar accesses, a shared-memory tree reduction
//   norms_2_warp.cuh   2. warp   16-byte accesses, warp-shuffle reductions, the block sized to the row
//   norms_3_rows.cuh   3. rows   the row held in registers: read from DRAM once, a warp per short row
//
// This file is the dispatch: which kernel runs for each algo= and row.  What auto picks, for
// matmul, attention and norms, is explained in one place: ops_cuda.h.
#include <string>

#include "norms_3_rows.cuh"

namespace pyworkloads::cuda {

namespace {

template <class T>
void launch(const NormProblem& p, NormAlgo algo, cudaStream_t stream) {
    if (algo == NormAlgo::Block) return launch_block<T>(p, stream);
    constexpr int kVec = 16 / sizeof(T);
    const bool vec =
        p.D % kVec == 0 && aligned16(p.x) && aligned16(p.y) && (!p.w || aligned16(p.w)) && (!p.b || aligned16(p.b));
    const int64_t per_row = vec ? p.D / kVec : p.D;   // accesses per row
    const bool rows_fit = vec && per_row <= int64_t(kRowsThreads) * kRowsMaxPacks;
    if ((algo == NormAlgo::Auto || algo == NormAlgo::Rows) && rows_fit) return launch_rows<T, kVec>(p, per_row, stream);
    launch_warp<T, kVec>(p, vec, per_row, stream);
}

}  // namespace

void norm_device(const NormProblem& p, NormAlgo algo, cudaStream_t stream) {
    if (p.rows == 0 || p.D == 0) return;
    switch (p.dtype) {
        case DType::F32: return launch<float>(p, algo, stream);
        case DType::F16: return launch<__half>(p, algo, stream);
        case DType::BF16: return launch<__nv_bfloat16>(p, algo, stream);
        default: throw std::invalid_argument(std::string("norm: unsupported dtype ") + dtype_name(p.dtype));
    }
}

}  // namespace pyworkloads::cuda
