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
// The versions, one file each, each opening with what it adds over the one before:
//
//   attention_1_simt.cuh       1. simt       one warp per query row, FP32 FMAs, any dtype
//   attention_2_mma.cuh        2. mma        FlashAttention-2 on mma.sync, P kept in registers
//   attention_3_mma_async.cuh  3. mma_async  2's math fed by ldmatrix and a cp.async K/V ring
//
// This file is the dispatch: which kernel runs for each algo= and head width.  What auto picks, for
// matmul, attention and norms, is explained in one place: ops_cuda.h.
#include "attention_3_mma_async.cuh"

namespace pyworkloads::cuda {

namespace {

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
        throw std::invalid_argument("attention: the CUDA kernels support head widths up to " +
                                    std::to_string(kMaxHeadDim) + ", got " + std::to_string(width));
    const bool mma_ok = p.dtype != DType::F32 && width <= 128;
    // Auto: version 3 for half types; its launcher runs version 2 where p.vec is false (the bindings
    // resolve before they know the alignment, so the choice between 2 and 3 is made at launch).
    if (requested == AttnAlgo::Auto) return mma_ok ? AttnAlgo::MmaAsync : AttnAlgo::Simt;
    if ((requested == AttnAlgo::Mma || requested == AttnAlgo::MmaAsync) && !mma_ok)
        throw std::invalid_argument(std::string("attention: algo='") +
                                    (requested == AttnAlgo::Mma ? "mma" : "mma_async") +
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
