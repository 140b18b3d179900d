// GELU, the activation of CLIP (OpenCLIP), SAM and Whisper: gelu(x) = x · Φ(x) = x/2 · (1 + erf(x/√2)).
//
// An elementwise op is memory-bound *if* its math is cheap; erf is not cheap when it is called one
// float at a time (the C library's erff is scalar), which made GELU a third of Whisper's time.
//
//   naive: the definition with std::erf, one element at a time (kept as the oracle).
//   fast:  branch-free code the compiler vectorises (AVX-512: 16 lanes):
//          Φ(x) = 1 − ½·erfc(|x|/√2) for x ≥ 0 and ½·erfc(|x|/√2) for x < 0, with
//          erfc(z) ≈ t·(a1 + t·(a2 + t·(a3 + t·(a4 + t·a5))))·e^(−z²),  t = 1/(1 + p·z)
//          (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7 -- about one float32 ulp of Φ near 1);
//          e^y by range reduction y = n·ln2 + r (|r| ≤ ln2/2), a degree-6 Taylor polynomial for
//          e^r, and 2^n built directly in the exponent bits.  Computing erfc rather than erf keeps
//          the small tail of Φ(x) for negative x accurate in absolute terms (no 1 − 1 cancellation).
#include <cstring>

#include "common.h"

namespace pyworkloads {

namespace {

inline float exp_neg(float y) {                 // e^y for y <= 0 (here y = −z², so never positive)
    y = y < -87.0f ? -87.0f : y;                  // below this e^y is a float32 denormal: 0 is close enough
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float magic = 12582912.0f;              // 1.5·2^23: adding and subtracting rounds to an integer
    const float n = (y * log2e + magic) - magic;
    const float r = (y - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void gelu_fast(const float* x, float* y, int64_t n) {
    const float p = 0.3275911f, a1 = 0.254829592f, a2 = -0.284496736f, a3 = 1.421413741f,
                a4 = -1.453152027f, a5 = 1.061405429f, inv_sqrt2 = 0.70710678118654752f;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        const float z = (v < 0 ? -v : v) * inv_sqrt2;
        const float t = 1.0f / (1.0f + p * z);
        const float half_erfc = 0.5f * t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp_neg(-z * z);
        const float phi = v < 0 ? half_erfc : 1.0f - half_erfc;
        y[i] = v * phi;
    }
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
          "Exact-form GELU x·Φ(x) of a float32 array (fast: vectorised erfc approximation, |error| <= ~2e-7·|x|).");
}

}  // namespace pyworkloads
