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
#include "strided.h"

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

// The machine's streaming-read roof: the kernel threads each sum a contiguous share of x (4
// independent vector accumulators, loads only).  A decode GEMV streams its weights the same way,
// so its GB/s over this is how close it runs to the memory system.  Returns the seconds of the
// pass and the sum (which keeps the loads from being optimised away).
py::tuple stream_read(py::handle x_obj) {
    const f32array x = require_f32(x_obj, "x");
    const int64_t n = x.size();
    const float* p = x.data();
    const int threads = kernel_threads();
    std::vector<float> part(threads, 0.0f);
    double seconds;
    {
        py::gil_scoped_release nogil;
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
        {
            const int nt = team_size(), t = thread_id();
            const int64_t per = (n / nt) / (4 * VL) * (4 * VL);
            const int64_t i0 = t * per, i1 = t == nt - 1 ? n : i0 + per;
            vf acc[4] = {vzero(), vzero(), vzero(), vzero()};
            int64_t i = i0;
            for (; i + 4 * VL <= i1; i += 4 * VL)
                for (int c = 0; c < 4; ++c) acc[c] = vadd(acc[c], vload(p + i + c * VL));
            float s = vhsum(vadd(vadd(acc[0], acc[1]), vadd(acc[2], acc[3])));
            for (; i < i1; ++i) s += p[i];
            part[t] = s;
        }
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    float sum = 0.0f;
    for (float v : part) sum += v;
    return py::make_tuple(seconds, sum);
}

}  // namespace

void bind_peak(py::module_& m) {
    m.def("stream_read", &stream_read, py::arg("x"),
          "(seconds, sum) of one pass over the float32 array x by the kernel threads, each summing a "
          "contiguous share: x.nbytes / seconds is the streaming-read bandwidth.");
    m.def("fma_peak", &fma_peak, py::arg("iterations") = 1 << 22,
          "FLOP/s of independent float32 FMAs on registers over the kernel threads: the measured "
          "compute roof of this machine at its current clock.");
}

}  // namespace pyworkloads
