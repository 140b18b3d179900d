// Attention forward on the GPU: out = softmax(scale * q k^T + bias, masked) v, per (batch, head),
// without ever materialising the [Tq, Tk] score matrix (flash attention).
//
// Every version keeps a tile of queries resident, streams the keys and values through shared
// memory one tile at a time, and folds each tile into the output with the online softmax: per
// query row a running max m and denominator l; a new tile with row max m' rescales the partial
// output and l by exp(m - m') before adding its own exp(s - m') terms.  At the end out = o / l,
// and a row that saw no allowed key (l == 0) is written as zeros, as the NumPy reference does.
// NaN and infinities follow the reference exactly.  It takes p = softmax(s) and p·v over every key,
// so a NaN or +inf score makes its row NaN, and a masked key's v row still meets a weight of 0
// (0 · NaN and 0 · inf are NaN).  The kernels keep a NaN in the running maxima (max_nan), rows with
// no allowed key so far still multiply their tiles' v rows by 0, and l == 0 keeps o's NaN
// (finish_row); afterwards attention_exact_rows (below) recomputes, the reference's way, every row
// that came out NaN or inf -- the unnormalised o of a few 3e38 values is inf where their average
// is not -- and, with causal tile skipping, every row whose skipped keys hold a NaN or inf in v.
// Finite rows only pay for the check.  Shared by all:
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

namespace {

// ---- rows that are not finite: the reference's arithmetic ---------------------------------------
constexpr int kExactWarps = 4;

// The last key of each (batch, kv head) whose v row holds a NaN or an infinity (-1: none).  With
// causal tile skipping a query row never meets the v rows past its tile's last key, which the
// reference multiplies by a weight of 0.
template <class T>
__global__ void attention_last_nonfinite_key(AttnProblem p, long long* last) {
    const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, hk = blockIdx.y, b = blockIdx.z;
    if (j >= p.Tk) return;
    const T* v = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh + j * p.v.st;
    for (int64_t d = 0; d < p.Dv; ++d)
        if (!isfinite(to_float(v[d]))) {
            atomicMax(last + b * p.Hkv + hk, static_cast<long long>(j));
            return;
        }
}

// Score of key j for query row `row`, as the reference computes it: a float32 dot product, times
// the scale, plus the bias; -inf where masked.
template <class T>
__device__ float exact_score(const AttnProblem& p, const T* qrow, const T* K, int64_t b, int64_t h, int64_t row,
                             int64_t j) {
    const T* krow = K + j * p.k.st;
    float dot = 0.f;
    for (int64_t d = 0; d < p.Dh; ++d) dot = fmaf(to_float(qrow[d]), to_float(krow[d]), dot);
    float x = dot * p.scale;
    const bool ok = allowed<T>(p, b, h, row, j);
    if (ok && p.bias) x += bias_at<T>(p, b, h, row, j);
    return ok ? x : kNegInf;
}

// One warp per query row: a row that holds a NaN or an infinity (or may have skipped a non-finite v
// row: last_bad) is recomputed as the reference does -- the maximum of the scores (NaN if one is
// NaN, 0 if all are -inf), weights p = exp(s - max) / Σ exp(s - max) (0 when the sum is 0), and
// out = Σ_j p_j · v_j over every key.  Three passes over the keys, the scores recomputed in each
// (no Tk-sized scratch); only such rows pay for them.
template <class T>
__global__ void __launch_bounds__(kExactWarps * 32) attention_exact_rows(AttnProblem p, const long long* last_bad) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row = int64_t(blockIdx.x) * kExactWarps + warp, h = blockIdx.y, b = blockIdx.z;
    if (row >= p.Tq) return;                                   // warp-uniform
    const int64_t hk = h / (p.Hq / p.Hkv);
    T* out = static_cast<T*>(p.out) + ((b * p.Hq + h) * p.Tq + row) * p.Dv;
    bool redo = last_bad && last_bad[b * p.Hkv + hk] > row + (p.Tk - p.Tq);
    for (int64_t d = lane; d < p.Dv; d += 32) redo = redo || !isfinite(to_float(out[d]));
    if (!__any_sync(0xffffffffu, redo)) return;
    const T* qrow = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh + row * p.q.st;
    const T* K = static_cast<const T*>(p.k.ptr) + b * p.k.sb + hk * p.k.sh;
    const T* V = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh;
    float mx = kNegInf;
    bool nan = false;
    for (int64_t k0 = 0; k0 < p.Tk; k0 += 32) {
        const float s = k0 + lane < p.Tk ? exact_score<T>(p, qrow, K, b, h, row, k0 + lane) : kNegInf;
        nan = nan || isnan(s);
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    if (__any_sync(0xffffffffu, nan)) mx = NAN;
    else if (mx == kNegInf) mx = 0.f;                          // no allowed key: every weight 0
    float l = 0.f;
    for (int64_t k0 = 0; k0 < p.Tk; k0 += 32)
        if (k0 + lane < p.Tk) l += expf(exact_score<T>(p, qrow, K, b, h, row, k0 + lane) - mx);
    l = warp_sum(l);
    for (int64_t d0 = 0; d0 < p.Dv; d0 += 32) {
        const int64_t d = d0 + lane;
        float acc = 0.f;
        for (int64_t k0 = 0; k0 < p.Tk; k0 += 32) {
            const float e = k0 + lane < p.Tk ? expf(exact_score<T>(p, qrow, K, b, h, row, k0 + lane) - mx) : 0.f;
            const float pj = l == 0.f ? 0.f : e / l;
            for (int jj = 0; jj < 32; ++jj) {
                const float pk = __shfl_sync(0xffffffffu, pj, jj);
                if (k0 + jj < p.Tk && d < p.Dv) acc = fmaf(pk, to_float(V[(k0 + jj) * p.v.st + d]), acc);
            }
        }
        if (d < p.Dv) out[d] = from_float<T>(acc);
    }
}

template <class T>
void launch_exact_rows(const AttnProblem& p, cudaStream_t stream) {
    // Tile skipping happens with causal masking only, and never reaches past a single query row's keys.
    const bool skips = p.causal && p.Tq > 1 && p.Tk > 0;
    const size_t bytes = skips ? size_t(p.B * p.Hkv) * sizeof(long long) : 0;
    void* last = nullptr;
    if (bytes) check(cudaMallocAsync(&last, bytes, stream), "attention: scratch");
    try {
        if (last) {
            check(cudaMemsetAsync(last, 0xff, bytes, stream), "attention: scratch");   // -1 everywhere
            const dim3 grid(grid_dim((p.Tk + 255) / 256, INT32_MAX, "attention Tk"),
                            grid_dim(p.Hkv, 65535, "attention kv heads"), grid_dim(p.B, 65535, "attention batch"));
            attention_last_nonfinite_key<T><<<grid, 256, 0, stream>>>(p, static_cast<long long*>(last));
            check_launch("attention_last_nonfinite_key");
        }
        const dim3 grid(grid_dim((p.Tq + kExactWarps - 1) / kExactWarps, INT32_MAX, "attention Tq"),
                        grid_dim(p.Hq, 65535, "attention heads"), grid_dim(p.B, 65535, "attention batch"));
        attention_exact_rows<T><<<grid, kExactWarps * 32, 0, stream>>>(p, static_cast<const long long*>(last));
        check_launch("attention_exact_rows");
    } catch (...) {
        if (last) cudaFreeAsync(last, stream);
        throw;
    }
    if (last) check(cudaFreeAsync(last, stream), "attention: freeing the scratch");   // after the kernels
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
        case DType::F32: launch<float>(p, algo, stream); return launch_exact_rows<float>(p, stream);
        case DType::F16: launch<__half>(p, algo, stream); return launch_exact_rows<__half>(p, stream);
        case DType::BF16: launch<__nv_bfloat16>(p, algo, stream); return launch_exact_rows<__nv_bfloat16>(p, stream);
        default: throw std::invalid_argument("attention: unsupported dtype");
    }
}

}  // namespace pyworkloads::cuda
