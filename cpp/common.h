// Shared helpers for the pybind11 bindings: strict argument checks that run *before* any memory
// is touched, so a bad call raises a Python exception naming the argument instead of crashing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "outputs.h"

#ifdef PYWORKLOADS_OPENMP
#include <omp.h>
#endif

namespace pyworkloads {
namespace py = pybind11;

using f32array = py::array_t<float, py::array::c_style>;

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Whether a's data and strides suit `float` loads: a view into a mapped file at an odd offset,
// or a field of a packed record, is not -- reading it through a float* is undefined behaviour,
// whatever the CPU tolerates -- and is copied first (a fresh NumPy array is aligned).
inline bool aligned(const py::array& a) { return a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_; }

inline py::array aligned_copy(const py::array& a) { return a.attr("copy")("K"); }

// A float32 NumPy array, C-contiguous and aligned (anything else is copied; any other dtype is
// refused: silently narrowing float64 would hide precision loss from the caller).
inline f32array require_f32(const py::handle& obj, const char* name, bool allow_none = false) {
    if (obj.is_none()) {
        if (allow_none) return f32array();
        throw py::type_error(std::string(name) + " must be a float32 NumPy array, got None");
    }
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a float32 NumPy array, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<float>()))
        throw py::type_error(std::string(name) + " must have dtype float32, got " + std::string(py::str(a.dtype())));
    return f32array::ensure(aligned(a) ? a : aligned_copy(a));  // copies only when not C-contiguous
}

inline double require_finite_nonneg(double v, const char* name) {
    if (!std::isfinite(v) || v < 0) throw py::value_error(std::string(name) + " must be a finite number >= 0");
    return v;
}

// ---- threads --------------------------------------------------------------------------------
// The kernels' thread count is one process-wide setting that every parallel region receives
// explicitly (num_threads): OpenMP's own setting (omp_set_num_threads) belongs to the thread that
// sets it and would not reach threads started later.  It starts from OpenMP's default
// (OMP_NUM_THREADS, else the cores) and never exceeds thread_limit(), 4 x the cores this process
// may run on: more threads only oversubscribe the cores, and a huge team crashes the OpenMP
// runtime, which lays a team out on the stack.  Each region divides its work by the team that
// actually runs (omp_get_num_threads()), which may be smaller than asked for.
inline int cores() {
#ifdef PYWORKLOADS_OPENMP
    return std::max(1, omp_get_num_procs());
#else
    return std::max(1u, std::thread::hardware_concurrency());
#endif
}

inline int thread_limit() { return 4 * cores(); }

inline std::atomic<int>& thread_setting() {
#ifdef PYWORKLOADS_OPENMP
    static std::atomic<int> n{std::clamp(omp_get_max_threads(), 1, thread_limit())};
#else
    static std::atomic<int> n{1};
#endif
    return n;
}

inline int kernel_threads() { return thread_setting().load(std::memory_order_relaxed); }

inline std::vector<py::ssize_t> shape_of(const py::array& a) {
    return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

}  // namespace pyworkloads
