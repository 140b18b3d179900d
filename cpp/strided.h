// Strided float32 views for kernels that read their operands through strides instead of copying
// them (transposed weights, head-split activations), plus per-thread aligned scratch buffers.
#pragma once

#include "common.h"

#include <cstdlib>
#include <memory>

namespace pyworkloads {

// A float32 NumPy array read in place: element strides (may be 0 or negative), no copy unless the
// array is not aligned for floats (a byte stride that is not a whole number of floats, e.g. a view
// into a structured array, or data at an odd address, e.g. a view into a mapped file).  Any other
// dtype is refused with TypeError, like require_f32: narrowing float64 silently would hide the
// precision loss from the caller.
struct StridedF32 {
    py::array arr;                  // keeps the data alive
    const float* data = nullptr;
    std::vector<int64_t> shape, stride;   // stride in elements

    int ndim() const { return static_cast<int>(shape.size()); }
    int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
    int64_t st(int i) const { return stride[i < 0 ? stride.size() + i : i]; }
};

inline StridedF32 strided_f32(const py::handle& obj, const char* name) {
    if (obj.is_none()) throw py::type_error(std::string(name) + " must be a float32 NumPy array, got None");
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a float32 NumPy array, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    StridedF32 v;
    v.arr = py::reinterpret_borrow<py::array>(obj);
    if (!v.arr.dtype().is(py::dtype::of<float>()))
        throw py::type_error(std::string(name) + " must have dtype float32, got " +
                             std::string(py::str(v.arr.dtype())) +
                             " (the cpp backend does not cast; convert with .astype(np.float32))");
    if (!aligned(v.arr)) v.arr = aligned_copy(v.arr);
    v.data = static_cast<const float*>(v.arr.data());
    for (py::ssize_t i = 0; i < v.arr.ndim(); ++i) {
        v.shape.push_back(v.arr.shape(i));
        v.stride.push_back(v.arr.shape(i) == 1 ? 0 : v.arr.strides(i) / static_cast<py::ssize_t>(sizeof(float)));
    }
    return v;
}

// Per-thread, 64-byte aligned, grow-only scratch: kernels called every token reuse their packing
// buffers instead of paying for fresh pages each call.  `slot` separates buffers used together.
inline float* thread_scratch(int slot, size_t nfloats) {
    struct Buf {
        float* p = nullptr;
        size_t n = 0;
        ~Buf() { std::free(p); }
    };
    thread_local Buf bufs[4];
    Buf& b = bufs[slot];
    if (b.n < nfloats) {
        std::free(b.p);
        const size_t bytes = ((nfloats * sizeof(float) + 63) / 64) * 64;
        b.p = static_cast<float*>(std::aligned_alloc(64, bytes));
        if (!b.p) {
            b.n = 0;
            throw std::bad_alloc();
        }
        b.n = nfloats;
    }
    return b.p;
}

inline int thread_id() {
#ifdef PYWORKLOADS_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline int team_size() {
#ifdef PYWORKLOADS_OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

}  // namespace pyworkloads
