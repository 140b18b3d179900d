// pyworkloads._kernels_<isa>: the C++ CPU backend, one module per ISA level (CMakeLists.txt builds
// the same sources with each level's flags; pyworkloads/_kernels.py loads the best this CPU runs).
// Each op family lives in its own file and registers itself here; the bindings validate every
// argument before touching memory and release the GIL while computing (see common.h).
#include "common.h"

#ifndef PYWORKLOADS_MODULE
#error "PYWORKLOADS_MODULE (the module's name) and PYWORKLOADS_ISA are set by CMakeLists.txt"
#endif

namespace pyworkloads {
void bind_norms(py::module_& m);
void bind_matmul(py::module_& m);
void bind_qmatmul(py::module_& m);
void bind_attention(py::module_& m);
void bind_activations(py::module_& m);
void bind_peak(py::module_& m);
}  // namespace pyworkloads

namespace py = pybind11;

PYBIND11_MODULE(PYWORKLOADS_MODULE, m) {
    m.doc() = "pyworkloads C++ CPU kernels (float32)";
    pyworkloads::thread_setting();   // read OpenMP's default now, before any other thread runs
    pyworkloads::bind_norms(m);
    pyworkloads::bind_matmul(m);
    pyworkloads::bind_qmatmul(m);
    pyworkloads::bind_attention(m);
    pyworkloads::bind_activations(m);
    pyworkloads::bind_peak(m);
    m.def("_output_cache", &pyworkloads::outputs::stats, py::arg("limit") = py::none(),
          "The cache the kernels' outputs of 1 MiB and more come from (cpp/outputs.h): limit, "
          "idle_bytes, idle_blocks, hits, misses.  With limit (bytes; 0 = no cache), sets it "
          "first, releasing idle blocks over it.");

    m.def(
        "set_num_threads",
        [](py::handle n) {
            const std::string got = py::repr(n);
            if (PyBool_Check(n.ptr()) || !PyIndex_Check(n.ptr()))
                throw py::type_error("set_num_threads: n must be an integer, got " + got);
            const py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(n.ptr()));
            if (!value) throw py::error_already_set();
            int overflow = 0;
            const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
            const int limit = pyworkloads::thread_limit();
            if (overflow || v < 1 || v > limit)
                throw py::value_error("set_num_threads: n must be a positive integer, at most " +
                                      std::to_string(limit) + " (4 x the " + std::to_string(pyworkloads::cores()) +
                                      " cores this process may use), got " + got);
            pyworkloads::thread_setting().store(static_cast<int>(v));
        },
        py::arg("n"), "Threads every later kernel call uses, from any Python thread (1 .. max_num_threads()).");
    // Which ISA levels this CPU (and its OS: the AVX and AVX-512 register state must be enabled)
    // can execute.  The portable module answers this before any other module is imported: importing
    // a module built for a level the CPU lacks could already execute one of its instructions.
    m.def(
        "cpu_supports",
        []() {
            py::dict d;
            d["portable"] = true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
            __builtin_cpu_init();
#if (defined(__clang__) && __clang_major__ >= 16) || (!defined(__clang__) && __GNUC__ >= 12)
            d["avx2"] = __builtin_cpu_supports("x86-64-v3") != 0;     // the psABI level, exactly
            d["avx512"] = __builtin_cpu_supports("x86-64-v4") != 0;
#else  // older compilers know the features, not the levels: the ones the kernels' flags enable
            const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                            __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
            d["avx2"] = v3;
            d["avx512"] = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
#endif
#else
            d["avx2"] = false;
            d["avx512"] = false;
#endif
            return d;
        },
        "{'portable': True, 'avx2': x86-64-v3 runs here, 'avx512': x86-64-v4 runs here}.");
    m.def("get_num_threads", []() { return pyworkloads::kernel_threads(); });
    m.def("max_num_threads", &pyworkloads::thread_limit,
          "The largest thread count set_num_threads accepts: 4 x the cores this process may use.");
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
            d["isa"] = PYWORKLOADS_ISA;
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
