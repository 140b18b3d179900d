// Packing a strided device view into a C-contiguous buffer (the bindings use it for device
// arrays whose layout a kernel cannot read directly: transposed, negatively strided, sliced
// along the last axis).  One thread per destination element, grid-stride loop: the destination
// writes are coalesced; the source reads follow the view.  Elements are moved as raw 1/2/4-byte
// words, so one instantiation per element size serves every dtype.
#include <algorithm>

#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

template <class U>
__global__ void strided_copy(const U* src, U* dst, StridedLayout layout, int64_t n) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        int64_t rest = i, offset = 0;
        for (int d = layout.ndim - 1; d >= 0; --d) {
            offset += (rest % layout.shape[d]) * layout.stride[d];
            rest /= layout.shape[d];
        }
        dst[i] = src[offset];
    }
}

}  // namespace

void strided_copy_device(const void* src, void* dst, int elem_size, const StridedLayout& layout, cudaStream_t stream) {
    int64_t n = 1;
    for (int d = 0; d < layout.ndim; ++d) n *= layout.shape[d];
    if (n == 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
    switch (elem_size) {
        case 1: strided_copy<<<blocks, 256, 0, stream>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), layout, n); break;
        case 2: strided_copy<<<blocks, 256, 0, stream>>>(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), layout, n); break;
        case 4: strided_copy<<<blocks, 256, 0, stream>>>(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), layout, n); break;
        default: throw std::invalid_argument("strided_copy: element size must be 1, 2 or 4 bytes");
    }
    check_launch("strided_copy");
}

}  // namespace pyworkloads::cuda
