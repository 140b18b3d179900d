// Row normalisations: RMSNorm (LLaMA) and LayerNorm (CLIP, SAM, Whisper) over the last axis.
//
// Both are memory-bound: per element they do a handful of flops, so the goal is to touch DRAM once
// per element read and once per element written.  Each row is normalised by one thread:
//
//   rms_norm:   pass 1  s  = Σ x²                  (vectorised reduction, row now in L1/L2)
//               pass 2  y  = x · (1/√(s/D + ε)) · w
//   layer_norm: pass 1  μ  = Σ x / D
//               pass 2  σ² = Σ (x − μ)² / D          (two-pass: no E[x²] − μ² cancellation)
//               pass 3  y  = (x − μ) · (1/√(σ² + ε)) · w + b
//
// The extra passes re-read a row that is still in cache, so DRAM traffic stays one read + one write.
// Rows are spread over OpenMP threads; the GIL is released while they run.  `*_naive` versions are
// the textbook loops (scalar, double accumulation) kept for teaching and as a test oracle.
#include "common.h"

namespace pyworkloads {

namespace {

void rms_norm_rows(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (rows * D > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * D;
        float* yr = y + r * D;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * inv * w[j];
    }
}

void layer_norm_rows(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (rows * D > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * D;
        float* yr = y + r * D;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < D; ++j) s += xr[j];
        const float mu = s / static_cast<float>(D);
        float v = 0.f;
#pragma omp simd reduction(+ : v)
        for (int64_t j = 0; j < D; ++j) v += (xr[j] - mu) * (xr[j] - mu);
        const float inv = 1.0f / std::sqrt(v / static_cast<float>(D) + eps);
        if (w && b) {
#pragma omp simd
            for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * inv * w[j] + b[j];
        } else {
            for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - mu) * inv * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);
        }
    }
}

void rms_norm_rows_naive(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < D; ++j) ss += double(x[r * D + j]) * x[r * D + j];
        const double inv = 1.0 / std::sqrt(ss / D + eps);
        for (int64_t j = 0; j < D; ++j) y[r * D + j] = float(x[r * D + j] * inv * w[j]);
    }
}

void layer_norm_rows_naive(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t D, float eps) {
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

f32array rms_norm(py::handle x_obj, py::handle w_obj, double eps, const std::string& version) {
    f32array x = require_f32(x_obj, "x");
    f32array w = require_f32(w_obj, "weight");
    const int64_t D = check_row_param(x, w, "rms_norm", "weight", true);
    require_finite_nonneg(eps, "eps");
    if (version != "fast" && version != "naive")
        throw py::value_error("rms_norm: version must be 'fast' or 'naive', got '" + version + "'");
    f32array y(shape_of(x));
    const int64_t rows = D ? x.size() / D : 0;
    const float *xp = x.data(), *wp = w.data();
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (version == "naive") rms_norm_rows_naive(xp, wp, yp, rows, D, float(eps));
        else rms_norm_rows(xp, wp, yp, rows, D, float(eps));
    }
    return y;
}

f32array layer_norm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps, const std::string& version) {
    f32array x = require_f32(x_obj, "x");
    f32array w = require_f32(w_obj, "weight", true);
    f32array b = require_f32(b_obj, "bias", true);
    const int64_t D = check_row_param(x, w, "layer_norm", "weight", !w_obj.is_none());
    check_row_param(x, b, "layer_norm", "bias", !b_obj.is_none());
    require_finite_nonneg(eps, "eps");
    if (version != "fast" && version != "naive")
        throw py::value_error("layer_norm: version must be 'fast' or 'naive', got '" + version + "'");
    f32array y(shape_of(x));
    const int64_t rows = D ? x.size() / D : 0;
    const float* xp = x.data();
    const float* wp = w_obj.is_none() ? nullptr : w.data();
    const float* bp = b_obj.is_none() ? nullptr : b.data();
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (version == "naive") layer_norm_rows_naive(xp, wp, bp, yp, rows, D, float(eps));
        else layer_norm_rows(xp, wp, bp, yp, rows, D, float(eps));
    }
    return y;
}

void bind_norms(py::module_& m) {
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6,
          py::arg("version") = "fast",
          "RMSNorm over the last axis of a float32 array: x / sqrt(mean(x^2) + eps) * weight.");
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5,
          py::arg("version") = "fast",
          "LayerNorm over the last axis of a float32 array (weight/bias may be None).");
}

}  // namespace pyworkloads
