// The machine's compute roof, measured: independent fused multiply-adds on registers, no memory
// traffic at all.  A kernel cannot do more FLOPs per second than this loop at the same clock, so
// the cost model takes it as the CPU's peak when the clock the OS reports (a VM's base clock, say)
// would put the theoretical peak below what the kernels reach.
//
// Each thread keeps CHAINS accumulators of VL lanes in flight: enough to cover the FMA latency
// (4-5 cycles) times the FMA pipes (2), so the pipes never wait for a result.
#include <chrono>

#include "common.h"
#include "simd.h"

namespace pyworkloads {

namespace {

using namespace simd;
constexpr int CHAINS = 12;

// FLOP/s of `iterations` rounds of CHAINS x VL FMAs per thread, over the kernel threads.
double fma_peak(int64_t iterations) {
    if (iterations < 1 || iterations > (int64_t(1) << 40))
        throw py::value_error("fma_peak: iterations must lie in [1, 2^40], got " + std::to_string(iterations));
    const int threads = kernel_threads();
    std::vector<float> sink(threads, 0.0f);
    double seconds;
    {
        py::gil_scoped_release nogil;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
        {
#ifdef PYWORKLOADS_OPENMP
            const int t = omp_get_thread_num();
#else
            const int t = 0;
#endif
            vf acc[CHAINS];
            for (int c = 0; c < CHAINS; ++c) acc[c] = vset1(1.0f + 1e-3f * float(c + t));
            const vf a = vset1(0.999999f), b = vset1(1e-7f);
            for (int64_t i = 0; i < iterations; ++i)
                for (int c = 0; c < CHAINS; ++c) acc[c] = vfma(acc[c], a, b);
            vf s = acc[0];
            for (int c = 1; c < CHAINS; ++c) s = vadd(s, acc[c]);
            sink[t] = vhsum(s);                      // the result is used: the loop stays
        }
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    float keep = 0.0f;
    for (float v : sink) keep += v;
    if (!(keep == keep)) throw std::runtime_error("fma_peak: NaN accumulator");
    return double(threads) * double(iterations) * CHAINS * VL * 2.0 / seconds;
}

}  // namespace

void bind_peak(py::module_& m) {
    m.def("fma_peak", &fma_peak, py::arg("iterations") = 1 << 22,
          "FLOP/s of independent float32 FMAs on registers over the kernel threads: the measured "
          "compute roof of this machine at its current clock.");
}

}  // namespace pyworkloads
