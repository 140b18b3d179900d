// pyworkloads._cuda: the CUDA backend's bindings.  NumPy inputs are validated on the host (same
// rules as the CPU bindings), copied to the device, computed, and copied back.
#include "common.h"
#include "norms_cuda.h"
#include "runtime.h"

namespace py = pybind11;
using namespace pyworkloads;

namespace {

// (number of usable devices, reason when there are none) -- never throws, so importing the module
// on a machine without a GPU or driver works and the backend is simply reported unavailable.
std::pair<int, std::string> device_status() {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear the sticky error
        return {0, cudaGetErrorString(err)};
    }
    return {n, n ? "" : "no CUDA devices"};
}

void require_device() {
    auto [n, why] = device_status();
    if (n == 0) throw std::runtime_error("no usable CUDA device: " + why);
}

int64_t row_width(const f32array& x, const f32array& p, const char* op, const char* name, bool present) {
    if (x.ndim() < 1) throw py::value_error(std::string(op) + ": x must have at least 1 dimension");
    const int64_t D = x.shape(x.ndim() - 1);
    if (present && (p.ndim() != 1 || p.shape(0) != D))
        throw py::value_error(std::string(op) + ": " + name + " must have shape (" + std::to_string(D) + ",), got " + shape_str(p));
    return D;
}

f32array rms_norm(py::handle x_obj, py::handle w_obj, double eps) {
    f32array x = require_f32(x_obj, "x"), w = require_f32(w_obj, "weight");
    const int64_t D = row_width(x, w, "rms_norm", "weight", true);
    require_finite_nonneg(eps, "eps");
    require_device();
    f32array y(shape_of(x));
    const int64_t rows = D ? x.size() / D : 0;
    {
        py::gil_scoped_release nogil;
        cuda::DeviceBuffer<float> dx(x.size()), dw(D), dy(x.size());
        dx.upload(x.data());
        dw.upload(w.data());
        cuda::rms_norm_device(dx.ptr, dw.ptr, dy.ptr, rows, D, float(eps));
        dy.download(y.mutable_data());
    }
    return y;
}

f32array layer_norm(py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps) {
    f32array x = require_f32(x_obj, "x"), w = require_f32(w_obj, "weight", true), b = require_f32(b_obj, "bias", true);
    const int64_t D = row_width(x, w, "layer_norm", "weight", !w_obj.is_none());
    row_width(x, b, "layer_norm", "bias", !b_obj.is_none());
    require_finite_nonneg(eps, "eps");
    require_device();
    f32array y(shape_of(x));
    const int64_t rows = D ? x.size() / D : 0;
    const bool has_w = !w_obj.is_none(), has_b = !b_obj.is_none();
    {
        py::gil_scoped_release nogil;
        cuda::DeviceBuffer<float> dx(x.size()), dw(has_w ? D : 0), db(has_b ? D : 0), dy(x.size());
        dx.upload(x.data());
        if (has_w) dw.upload(w.data());
        if (has_b) db.upload(b.data());
        cuda::layer_norm_device(dx.ptr, has_w ? dw.ptr : nullptr, has_b ? db.ptr : nullptr, dy.ptr, rows, D, float(eps));
        dy.download(y.mutable_data());
    }
    return y;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "pyworkloads CUDA kernels";
    m.def("device_status", &device_status, "(device count, reason if none); never raises");
    m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6);
    m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5);
    m.def("runtime_version", []() { int v = 0; cudaRuntimeGetVersion(&v); return v; });
}
