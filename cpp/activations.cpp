// GELU, the activation of CLIP (OpenCLIP), SAM and Whisper: gelu(x) = x · Φ(x) = x/2 · (1 + erf(x/√2)).
//
// An elementwise op is memory-bound *if* its math is cheap; erf is not cheap when it is called one
// float at a time (the C library's erff is scalar), which made GELU a third of Whisper's time.
//
//   naive: the definition with std::erf, one element at a time (kept as the oracle).
//   fast:  the SIMD layer of simd.h (16 lanes on AVX-512, 8 on AVX2, a portable fallback), with
//          Φ's tail from erfc so that no branch per element is needed:
//            h(a)    = ½·erfc(a/√2) ≈ ½·t·(a1 + t·(a2 + t·(a3 + t·(a4 + t·a5))))·e^(−a²/2),
//                      t = 1/(1 + p·a/√2)   (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7 in erfc)
//            gelu(x) = x/2 + |x|·(½ − h(|x|))   (= x·(1 − h) for x ≥ 0 and x·h for x < 0),
//          with e^y from simd.h's vexp (the one the attention kernel's softmax uses).
#include "common.h"
#include "simd.h"

namespace pyworkloads {

namespace {

using namespace simd;

inline vf gelu_lanes(vf x) {
    const vf a = vmax(x, vsub(vzero(), x));                                     // |x|
    const vf z = vmul(a, vset1(0.70710678118654752f));                         // |x|/√2
    const vf t = vdiv(vset1(1.0f), vfma(z, vset1(0.3275911f), vset1(1.0f)));
    vf poly = vset1(1.061405429f);
    poly = vfma(poly, t, vset1(-1.453152027f));
    poly = vfma(poly, t, vset1(1.421413741f));
    poly = vfma(poly, t, vset1(-0.284496736f));
    poly = vfma(poly, t, vset1(0.254829592f));
    const vf h = vmul(vmul(vset1(0.5f), vmul(t, poly)), vexp(vsub(vzero(), vmul(z, z))));   // ½·erfc(z)
    return vfma(a, vsub(vset1(0.5f), h), vmul(vset1(0.5f), x));
}

void gelu_fast(const float* x, float* y, int64_t n) {
    const int64_t full = n / VL * VL;
#pragma omp parallel for schedule(static) num_threads(kernel_threads()) if (n > 65536)
    for (int64_t i = 0; i < full; i += VL) vstore(y + i, gelu_lanes(vload(x + i)));
    if (full < n) vstore_n(y + full, gelu_lanes(vload_n(x + full, int(n - full))), int(n - full));
}

void gelu_naive(const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

f32array gelu(py::handle x_obj, const std::string& version) {
    f32array x = require_f32(x_obj, "x");
    if (version != "fast" && version != "naive")
        throw py::value_error("gelu: version must be 'fast' or 'naive', got '" + version + "'");
    f32array y(shape_of(x));
    const float* xp = x.data();
    float* yp = y.mutable_data();
    const int64_t n = x.size();
    {
        py::gil_scoped_release nogil;
        if (version == "naive") gelu_naive(xp, yp, n);
        else gelu_fast(xp, yp, n);
    }
    return y;
}

}  // namespace

void bind_activations(py::module_& m) {
    m.def("gelu", &gelu, py::arg("x"), py::arg("version") = "fast",
          "Exact-form GELU x·Φ(x) of a float32 array (fast: vectorised erfc approximation, |error| <= "
          "~4e-7·max(1,|x|)).");
}

}  // namespace pyworkloads
