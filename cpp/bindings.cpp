// pyworkloads._kernels: the C++ CPU backend.  Each op family lives in its own file and registers
// itself here; the bindings validate every argument before touching memory and release the GIL
// while computing (see common.h).
#include "common.h"

namespace pyworkloads {
void bind_norms(py::module_& m);
void bind_matmul(py::module_& m);
void bind_attention(py::module_& m);
void bind_activations(py::module_& m);
}  // namespace pyworkloads

namespace py = pybind11;

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "pyworkloads C++ CPU kernels (float32)";
    pyworkloads::bind_norms(m);
    pyworkloads::bind_matmul(m);
    pyworkloads::bind_attention(m);
    pyworkloads::bind_activations(m);

    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("n must be >= 1");
#ifdef PYWORKLOADS_OPENMP
            omp_set_num_threads(n);
#endif
        },
        py::arg("n"), "Threads used by the kernels (OpenMP).");
    m.def("get_num_threads", []() {
#ifdef PYWORKLOADS_OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
    m.def(
        "build_info",
        []() {
            py::dict d;
#ifdef PYWORKLOADS_OPENMP
            d["openmp"] = true;
#else
            d["openmp"] = false;
#endif
#if defined(__AVX512F__)
            d["simd"] = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
            d["simd"] = "avx2+fma";
#else
            d["simd"] = "portable";
#endif
            d["compiler"] = __VERSION__;
#ifdef PYWORKLOADS_SANITIZERS
            d["sanitizers"] = PYWORKLOADS_SANITIZERS;
#else
            d["sanitizers"] = "";
#endif
            return d;
        },
        "How the extension was compiled (OpenMP, SIMD level, compiler, sanitizers).");
}
