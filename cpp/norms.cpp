// Row normalisations: RMSNorm (LLaMA) and LayerNorm (CLIP, SAM, Whisper) over the last axis, as
// two numbered versions, each section below opening with what it adds over the one before:
//
//   1. naive  the textbook loops: scalar, double accumulation (the test oracle)
//   2. rows   vectorised passes over a row that stays in cache, rows spread over threads
//
// version="naive" runs 1, version="fast" runs 2.  Fused residual (optional `residual=` argument):
// transformer blocks compute h = x + r and then norm(h); passing r makes one call write both h and
// norm(h) -- one read of x and r instead of an extra full pass for the add -- and return the pair
// (norm(h), h).
#include "common.h"
#include "simd.h"

namespace pyworkloads {

namespace {

using namespace simd;

// =============================================================================================
// 1. naive: the definitions, one row at a time -- rms_norm: y = x / √(Σx²/D + ε) · w; layer_norm:
// μ = Σx/D, σ² = Σ(x − μ)²/D, y = (x − μ)/√(σ² + ε) · w + b -- in scalar loops accumulating in
// double.  No SIMD, no threads.  Kept for reading and as the oracle the tests check
// version="fast" against.
// =============================================================================================
void rms_norm_rows_naive(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < D; ++j) ss += double(x[r * D + j]) * x[r * D + j];
        const double inv = 1.0 / std::sqrt(ss / D + eps);
        for (int64_t j = 0; j < D; ++j) y[r * D + j] = float(x[r * D + j] * inv * w[j]);
    }
}

void layer_norm_rows_naive(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t D,
                           float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        double s = 0, v = 0;
        for (int64_t j = 0; j < D; ++j) s += x[r * D + j];
        const double mu = s / D;
        for (int64_t j = 0; j < D; ++j) v += (x[r * D + j] - mu) * (x[r * D + j] - mu);
        const double inv = 1.0 / std::sqrt(v / D + eps);
        for (int64_t j = 0; j < D; ++j)
            y[r * D + j] = float((x[r * D + j] - mu) * inv * (w ? w[j] : 1.f) + (b ? b[j] : 0.f));
    }
}

// =============================================================================================
// 2. rows: memory-bound, so the aim is to touch DRAM once per element read and once per element
// written.  Over version 1 it vectorises each pass (simd.h) and spreads the rows over OpenMP
// threads (the GIL is released while they run); a row is normalised by one thread:
//
//   rms_norm:   pass 1  s  = Σ x²                  (vectorised reduction, row now in L1/L2)
//               pass 2  y  = x · (1/√(s/D + ε)) · w
//   layer_norm: pass 1  μ  = Σ x / D
//               pass 2  σ² = Σ (x − μ)² / D          (two-pass: no E[x²] − μ² cancellation)
//               pass 3  y  = (x − μ) · (1/√(σ² + ε)) · w + b
//
// The extra passes re-read a row that is still in cache, so DRAM traffic stays one read + one
// write.  The reductions use four independent SIMD accumulators so the adds pipeline; with a
// residual, h = x + r is written first and read back from cache.
// =============================================================================================

// Σ x[j], or Σ (x[j] - mu)² when `squares`, with four independent vector accumulators.
inline float row_sum(const float* x, int64_t D, bool squares, float mu = 0.f) {
    const vf vmu = vset1(mu);
    vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    int64_t j = 0;
    auto term = [&](vf v) { return vsub(v, vmu); };
    if (squares) {
        for (; j + 4 * VL <= D; j += 4 * VL) {
            const vf v0 = term(vload(x + j)), v1 = term(vload(x + j + VL));
            const vf v2 = term(vload(x + j + 2 * VL)), v3 = term(vload(x + j + 3 * VL));
            a0 = vfma(v0, v0, a0);
            a1 = vfma(v1, v1, a1);
            a2 = vfma(v2, v2, a2);
            a3 = vfma(v3, v3, a3);
        }
        for (; j + VL <= D; j += VL) {
            const vf v = term(vload(x + j));
            a0 = vfma(v, v, a0);
        }
        float s = vhsum(vadd(vadd(a0, a1), vadd(a2, a3)));
        for (; j < D; ++j) s += (x[j] - mu) * (x[j] - mu);
        return s;
    }
    for (; j + 4 * VL <= D; j += 4 * VL) {
        a0 = vadd(a0, vload(x + j));
        a1 = vadd(a1, vload(x + j + VL));
        a2 = vadd(a2, vload(x + j + 2 * VL));
        a3 = vadd(a3, vload(x + j + 3 * VL));
    }
    for (; j + VL <= D; j += VL) a0 = vadd(a0, vload(x + j));
    float s = vhsum(vadd(vadd(a0, a1), vadd(a2, a3)));
    for (; j < D; ++j) s += x[j];
    return s;
}

// y = (x - mu) * inv * w + b over a row (w, b may be null).
inline void row_affine(const float* x, const float* w, const float* b, float* y, int64_t D, float mu, float inv) {
    const vf vmu = vset1(mu), vinv = vset1(inv);
    int64_t j = 0;
    for (; j + VL <= D; j += VL) {
        vf v = vmul(vsub(vload(x + j), vmu), vinv);
        if (w) v = vmul(v, vload(w + j));
        if (b) v = vadd(v, vload(b + j));
        vstore(y + j, v);
    }
    for (; j < D; ++j) y[j] = (x[j] - mu) * inv * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);
}

// h = x + r over a row (the fused residual add); returns h.
inline const float* row_residual(const float* x, const float* r, float* h, int64_t D) {
    int64_t j = 0;
    for (; j + VL <= D; j += VL) vstore(h + j, vadd(vload(x + j), vload(r + j)));
    for (; j < D; ++j) h[j] = x[j] + r[j];
    return h;
}

void rms_norm_rows(const float* x, const float* res, float* h, const float* w, float* y, int64_t rows, int64_t D,
                   float eps) {
#pragma omp parallel for schedule(static) num_threads(kernel_threads()) if (rows * D > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = res ? row_residual(x + r * D, res + r * D, h + r * D, D) : x + r * D;
        const float inv = 1.0f / std::sqrt(row_sum(xr, D, true) / static_cast<float>(D) + eps);
        row_affine(xr, w, nullptr, y + r * D, D, 0.f, inv);
    }
}

void layer_norm_rows(const float* x, const float* res, float* h, const float* w, const float* b, float* y, int64_t rows,
                     int64_t D, float eps) {
#pragma omp parallel for schedule(static) num_threads(kernel_threads()) if (rows * D > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = res ? row_residual(x + r * D, res + r * D, h + r * D, D) : x + r * D;
        const float mu = row_sum(xr, D, false) / static_cast<float>(D);
        const float var = row_sum(xr, D, true, mu) / static_cast<float>(D);   // two-pass: no cancellation
        row_affine(xr, w, b, y + r * D, D, mu, 1.0f / std::sqrt(var + eps));
    }
}

// Validates (x [..., D], a [D] or None) and returns D; raises naming the argument.
int64_t check_row_param(const f32array& x, const f32array& p, const char* op, const char* name, bool present) {
    if (x.ndim() < 1) throw py::value_error(std::string(op) + ": x must have at least 1 dimension");
    const int64_t D = x.shape(x.ndim() - 1);
    if (present && (p.ndim() != 1 || p.shape(0) != D))
        throw py::value_error(std::string(op) + ": " + name + " must have shape (" + std::to_string(D) +
                              ",) to match x's last axis, got " + shape_str(p));
    return D;
}

}  // namespace

// residual: None, or an array of x's shape added to x first (returns (y, x + residual)).
py::object finish(f32array& y, py::object& h, bool fused) {
    return fused ? py::object(py::make_tuple(y, h)) : py::object(y);
}

f32array check_residual(const py::object& res_obj, const f32array& x, const char* op) {
    if (res_obj.is_none()) return f32array();
    f32array r = require_f32(res_obj, "residual");
    if (shape_of(r) != shape_of(x))
        throw py::value_error(std::string(op) + ": residual must have x's shape " + shape_str(x) + ", got " +
                              shape_str(r));
    return r;
}

py::object rms_norm(py::handle x_obj, py::handle w_obj, double eps, const std::string& version, py::object res_obj) {
    f32array x = require_f32(x_obj, "x");
    f32array w = require_f32(w_obj, "weight");
    const int64_t D = check_row_param(x, w, "rms_norm", "weight", true);
    require_finite_nonneg(eps, "eps");
    if (version != "fast" && version != "naive")
        throw py::value_error("rms_norm: version must be 'fast' or 'naive', got '" + version + "'");
    f32array res = check_residual(res_obj, x, "rms_norm");
    const bool fused = !res_obj.is_none();
    f32array y = outputs::new_array(shape_of(x));
    f32array h = fused ? outputs::new_array(shape_of(x)) : f32array();
    const int64_t rows = D ? x.size() / D : 0;
    const float *xp = x.data(), *wp = w.data(), *rp = fused ? res.data() : nullptr;
    float *yp = y.mutable_data(), *hp = fused ? h.mutable_data() : nullptr;
    {
        py::gil_scoped_release nogil;
        if (version == "naive") {
            if (fused)
                for (int64_t i = 0; i < rows * D; ++i) hp[i] = xp[i] + rp[i];
            rms_norm_rows_naive(fused ? hp : xp, wp, yp, rows, D, float(eps));
        } else {
            rms_norm_rows(xp, rp, hp, wp, yp, rows, D, float(eps));
        }
    }
    py::object ho = h;
    return finish(y, ho, fused);
}

py::object layer_norm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps, const std::string& version,
                      py::object res_obj) {
    f32array x = require_f32(x_obj, "x");
    f32array w = require_f32(w_obj, "weight", true);
    f32array b = require_f32(b_obj, "bias", true);
    const int64_t D = check_row_param(x, w, "layer_norm", "weight", !w_obj.is_none());
    check_row_param(x, b, "layer_norm", "bias", !b_obj.is_none());
    require_finite_nonneg(eps, "eps");
    if (version != "fast" && version != "naive")
        throw py::value_error("layer_norm: version must be 'fast' or 'naive', got '" + version + "'");
    f32array res = check_residual(res_obj, x, "layer_norm");
    const bool fused = !res_obj.is_none();
    f32array y = outputs::new_array(shape_of(x));
    f32array h = fused ? outputs::new_array(shape_of(x)) : f32array();
    const int64_t rows = D ? x.size() / D : 0;
    const float* xp = x.data();
    const float* wp = w_obj.is_none() ? nullptr : w.data();
    const float* bp = b_obj.is_none() ? nullptr : b.data();
    const float* rp = fused ? res.data() : nullptr;
    float *yp = y.mutable_data(), *hp = fused ? h.mutable_data() : nullptr;
    {
        py::gil_scoped_release nogil;
        if (version == "naive") {
            if (fused)
                for (int64_t i = 0; i < rows * D; ++i) hp[i] = xp[i] + rp[i];
            layer_norm_rows_naive(fused ? hp : xp, wp, bp, yp, rows, D, float(eps));
        } else {
            layer_norm_rows(xp, rp, hp, wp, bp, yp, rows, D, float(eps));
        }
    }
    py::object ho = h;
    return finish(y, ho, fused);
}

void bind_norms(py::module_& m) {
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::arg("version") = "fast",
          py::arg("residual") = py::none(),
          "RMSNorm over the last axis of a float32 array: x / sqrt(mean(x^2) + eps) * weight.\n"
          "With residual=r (x's shape) it normalises h = x + r and returns (norm(h), h). Non-float32 -> TypeError;\n"
          "non-contiguous inputs are copied.");
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5,
          py::arg("version") = "fast", py::arg("residual") = py::none(),
          "LayerNorm over the last axis of a float32 array (weight/bias may be None).\n"
          "With residual=r (x's shape) it normalises h = x + r and returns (norm(h), h).");
}

}  // namespace pyworkloads
