// Packing a strided device view into a C-contiguous buffer (the bindings use it for device
// arrays whose layout a kernel cannot read directly: transposed, negatively strided, sliced
// along the last axis).  One thread per destination element, grid-stride loop: the destination
// writes are coalesced; the source reads follow the view.  Elements are moved as raw 1/2/4-byte
// words, so one instantiation per element size serves every dtype.  The bindings hand it a
// collapsed layout (size-1 dimensions dropped, mergeable neighbours merged: interop.cpp).
#include <algorithm>
#include <string>

#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

// Index = uint32_t when every element index fits (the common case): 32-bit division is several
// times cheaper than 64-bit, and the index arithmetic is all this kernel does.
template <class U, class Index>
__global__ void strided_copy(const U* src, U* dst, StridedLayout layout, Index n) {
    for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
        Index rest = i;
        int64_t offset = 0;
        for (int d = layout.ndim - 1; d >= 0; --d) {
            const Index size = Index(layout.shape[d]);
            offset += int64_t(rest % size) * layout.stride[d];
            rest /= size;
        }
        dst[i] = src[offset];
    }
}

template <class U>
void launch(const void* src, void* dst, const StridedLayout& layout, int64_t n, unsigned blocks, cudaStream_t stream) {
    // 32-bit indices need i + gridDim*blockDim (the loop's last step) to stay below 2^32 as well
    if (n + int64_t(blocks) * 256 < (int64_t(1) << 32))
        strided_copy<U, uint32_t>
            <<<blocks, 256, 0, stream>>>(static_cast<const U*>(src), static_cast<U*>(dst), layout, uint32_t(n));
    else
        strided_copy<U, uint64_t>
            <<<blocks, 256, 0, stream>>>(static_cast<const U*>(src), static_cast<U*>(dst), layout, uint64_t(n));
}

}  // namespace

void strided_copy_device(const void* src, void* dst, int elem_size, const StridedLayout& layout, cudaStream_t stream) {
    if (layout.ndim < 0 || layout.ndim > kMaxDims)
        throw std::invalid_argument("strided_copy: layout has " + std::to_string(layout.ndim) +
                                    " dimensions, at most " + std::to_string(kMaxDims) + " are supported");
    int64_t n = 1;
    for (int d = 0; d < layout.ndim; ++d) n *= layout.shape[d];
    if (n == 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
    switch (elem_size) {
        case 1: launch<uint8_t>(src, dst, layout, n, blocks, stream); break;
        case 2: launch<uint16_t>(src, dst, layout, n, blocks, stream); break;
        case 4: launch<uint32_t>(src, dst, layout, n, blocks, stream); break;
        default: throw std::invalid_argument("strided_copy: element size must be 1, 2 or 4 bytes");
    }
    check_launch("strided_copy");
}

}  // namespace pyworkloads::cuda
