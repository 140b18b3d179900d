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
//
// approximate="sigmoid" is the form OpenAI's CLIP was trained with ("quick_gelu"):
//   gelu_σ(x) = x · σ(1.702·x),  σ(z) = e^min(z,0) / (1 + e^-|z|)
// -- one formula for both signs in which no exponential overflows; below z = -87.3 vexp's exact
// zero makes σ = 0, so -inf gives -inf · 0 = NaN, as x · expit(1.702·x) does in NumPy.
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

inline vf gelu_sigmoid_lanes(vf x) {
    const vf z = vmul(x, vset1(1.702f));
    const vf neg_part = vsub(vzero(), vmax(vsub(vzero(), z), vzero()));        // min(z, 0)
    const vf neg_abs = vsub(vzero(), vmax(z, vsub(vzero(), z)));                // -|z|
    return vmul(x, vdiv(vexp(neg_part), vadd(vset1(1.0f), vexp(neg_abs))));
}

template <vf (*LANES)(vf)>
void elementwise(const float* x, float* y, int64_t n) {
    const int64_t full = n / VL * VL;
#pragma omp parallel for schedule(static) num_threads(kernel_threads()) if (n > 65536)
    for (int64_t i = 0; i < full; i += VL) vstore(y + i, LANES(vload(x + i)));
    if (full < n) vstore_n(y + full, LANES(vload_n(x + full, int(n - full))), int(n - full));
}

void gelu_naive(const float* x, float* y, int64_t n, bool sigmoid) {
    for (int64_t i = 0; i < n; ++i)
        y[i] = sigmoid ? x[i] / (1.0f + std::exp(-1.702f * x[i]))
                       : 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

f32array gelu(py::handle x_obj, const std::string& version, const std::string& approximate) {
    f32array x = require_f32(x_obj, "x");
    if (version != "fast" && version != "naive")
        throw py::value_error("gelu: version must be 'fast' or 'naive', got '" + version + "'");
    if (approximate != "none" && approximate != "sigmoid")
        throw py::value_error("gelu: approximate must be 'none' or 'sigmoid', got '" + approximate + "'");
    const bool sigmoid = approximate == "sigmoid";
    f32array y = outputs::new_array(shape_of(x));
    const float* xp = x.data();
    float* yp = y.mutable_data();
    const int64_t n = x.size();
    {
        py::gil_scoped_release nogil;
        if (version == "naive") gelu_naive(xp, yp, n, sigmoid);
        else if (sigmoid) elementwise<gelu_sigmoid_lanes>(xp, yp, n);
        else elementwise<gelu_lanes>(xp, yp, n);
    }
    return y;
}

}  // namespace

void bind_activations(py::module_& m) {
    m.def("gelu", &gelu, py::arg("x"), py::arg("version") = "fast", py::arg("approximate") = "none",
          "GELU of a float32 array: approximate='none' the exact form x·Φ(x) (fast: vectorised erfc "
          "approximation, |error| <= ~4e-7·max(1,|x|)); 'sigmoid' x·σ(1.702·x) (CLIP's quick_gelu).");
}

}  // namespace pyworkloads
