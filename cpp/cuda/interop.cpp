// NumPy / __cuda_array_interface__ / DLPack arguments and the DeviceArray result (see interop.h).
#include "interop.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>

namespace pyworkloads::cuda {

namespace {

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

}  // namespace

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
    std::vector<int64_t> s(shape.size());
    int64_t step = 1;
    for (int i = int(shape.size()) - 1; i >= 0; --i) {
        s[i] = step;
        step *= shape[i] > 0 ? shape[i] : 1;
    }
    return s;
}

int64_t TensorArg::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

bool TensorArg::c_contiguous() const {
    if (numel() == 0) return true;                       // no element to misplace, whatever the strides
    int64_t step = 1;
    for (int i = ndim() - 1; i >= 0; --i) {
        if (shape[i] != 1 && strides[i] != step) return false;
        step *= shape[i];
    }
    return true;
}

std::string TensorArg::shape_str() const {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

int64_t DeviceArray::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// ---- parsing ----------------------------------------------------------------------------------
namespace {

TensorArg from_numpy(py::array arr, const std::string& name) {
    py::dtype dt = arr.dtype();
    if (!dt.attr("isnative").cast<bool>())
        type_error(name + " must be in native byte order, got dtype " + std::string(py::str(dt)));
    TensorArg t;
    t.name = name;
    const char kind = dt.kind();
    if (kind == 'f' && dt.itemsize() == 4) t.dtype = DType::F32;
    else if (kind == 'f' && dt.itemsize() == 2) t.dtype = DType::F16;
    else if (kind == 'b') t.dtype = DType::Bool;
    else type_error(name + " must be a float32, float16 or bool array, got dtype " + std::string(py::str(dt)));
    // A dense view (a permutation of a contiguous block, e.g. the `W.T` every linear layer passes)
    // is uploaded as it lies and packed on the device; anything else is made C-contiguous here.
    t.shape.assign(arr.shape(), arr.shape() + arr.ndim());
    const int64_t item = dt.itemsize();
    bool dense = arr.ndim() <= kMaxDims;                 // deeper views are packed here: the device copy has 8 slots
    for (int i = 0; i < arr.ndim() && dense; ++i) {
        dense = dense && arr.strides(i) >= 0 && arr.strides(i) % item == 0;
        if (dense) t.strides.push_back(arr.strides(i) / item);
    }
    if (dense) {
        std::vector<std::pair<int64_t, int64_t>> dims;   // (stride, size) of the non-trivial dimensions
        for (int i = 0; i < arr.ndim(); ++i)
            if (t.shape[i] != 1) dims.emplace_back(t.strides[i], t.shape[i]);
        std::sort(dims.begin(), dims.end());
        int64_t step = 1;
        for (const auto& [stride, size] : dims) {
            dense = dense && (stride == step || size == 0);
            step *= size;
        }
    }
    if (dense) {
        t.data = arr.data();
        t.keep = arr;
        return t;
    }
    py::array c = py::array::ensure(arr, py::array::c_style);   // copies only when not C-contiguous
    if (!c) throw py::error_already_set();
    t.strides = contiguous_strides(t.shape);
    t.data = c.data();
    t.keep = c;
    return t;
}

DType dtype_from_typestr(const std::string& ts, const std::string& name) {
    if (ts.size() == 3 && (ts[0] == '<' || ts[0] == '=' || ts[0] == '|')) {
        const std::string body = ts.substr(1);
        if (body == "f4") return DType::F32;
        if (body == "f2") return DType::F16;
        if (body == "b1") return DType::Bool;
    }
    type_error(name + ": unsupported __cuda_array_interface__ typestr '" + ts +
               "' (expected '<f4', '<f2' or '|b1'; pass bfloat16 through DLPack)");
}

TensorArg from_cai(py::handle obj, const std::string& name) {
    py::object iface = obj.attr("__cuda_array_interface__");
    if (!py::isinstance<py::dict>(iface)) type_error(name + ".__cuda_array_interface__ must be a dict");
    py::dict d = iface.cast<py::dict>();
    for (const char* key : {"shape", "typestr", "data"})
        if (!d.contains(key)) type_error(name + ".__cuda_array_interface__ lacks '" + key + "'");
    TensorArg t;
    t.name = name;
    t.on_device = true;
    t.dtype = dtype_from_typestr(py::str(d["typestr"]), name);
    for (py::handle s : d["shape"].cast<py::tuple>()) {
        const int64_t v = s.cast<int64_t>();
        if (v < 0) throw py::value_error(name + ": negative dimension in __cuda_array_interface__ shape");
        t.shape.push_back(v);
    }
    if (t.shape.size() > size_t(kMaxDims)) throw py::value_error(name + " has more than 8 dimensions");
    const py::tuple data = d["data"].cast<py::tuple>();
    if (data.size() != 2) type_error(name + ".__cuda_array_interface__['data'] must be (pointer, read_only)");
    t.data = reinterpret_cast<const void*>(data[0].cast<uintptr_t>());
    if (d.contains("mask") && !d["mask"].is_none())
        type_error(name + ": masked __cuda_array_interface__ arrays are not supported");
    const int64_t item = dtype_size(t.dtype);
    if (d.contains("strides") && !d["strides"].is_none()) {
        for (py::handle s : d["strides"].cast<py::tuple>()) {
            const int64_t bytes = s.cast<int64_t>();
            if (bytes % item) type_error(name + ": strides must be multiples of the element size");
            t.strides.push_back(bytes / item);
        }
        if (t.strides.size() != t.shape.size())
            type_error(name + ": __cuda_array_interface__ strides and shape differ in length");
    } else {
        t.strides = contiguous_strides(t.shape);
    }
    if (d.contains("stream") && !d["stream"].is_none()) {
        t.stream = d["stream"].cast<int64_t>();
        if (t.stream == 0)
            throw py::value_error(name + ": __cuda_array_interface__ stream 0 is disallowed by the protocol");
    }
    if (!t.data && t.numel() != 0) throw py::value_error(name + ": null data pointer for a non-empty array");
    return t;
}

// device_type: the producer's __dlpack_device__()[0] when the caller already asked (-1: ask here).
TensorArg from_dlpack(py::handle obj, const std::string& name, int device_type = -1) {
    // Ask a CUDA producer to order its pending work before the legacy default stream (stream=1),
    // where our kernels run; CPU producers take no stream.
    if (device_type < 0 && py::hasattr(obj, "__dlpack_device__"))
        device_type = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>().first;
    const bool cuda_producer = device_type == dlpack::kCUDA || device_type == dlpack::kCUDAManaged;
    py::object cap = cuda_producer ? obj.attr("__dlpack__")(py::arg("stream") = 1) : obj.attr("__dlpack__")();
    if (!PyCapsule_IsValid(cap.ptr(), "dltensor"))
        type_error(name + ".__dlpack__() did not return an unused 'dltensor' capsule");
    auto* mt = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    if (!mt) throw py::error_already_set();
    if (PyCapsule_SetName(cap.ptr(), "used_dltensor") != 0) throw py::error_already_set();
    TensorArg t;
    t.name = name;
    t.dl = std::shared_ptr<dlpack::ManagedTensor>(mt, [](dlpack::ManagedTensor* p) {
        if (p->deleter) p->deleter(p);
    });
    const dlpack::Tensor& dl = mt->dl_tensor;
    const auto& dt = dl.dtype;
    if (dt.lanes != 1) type_error(name + ": vector (multi-lane) DLPack dtypes are not supported");
    if (dt.code == dlpack::kFloat && dt.bits == 32) t.dtype = DType::F32;
    else if (dt.code == dlpack::kFloat && dt.bits == 16) t.dtype = DType::F16;
    else if (dt.code == dlpack::kBfloat && dt.bits == 16) t.dtype = DType::BF16;
    else if (dt.code == dlpack::kBool && dt.bits == 8) t.dtype = DType::Bool;
    else
        type_error(name + ": unsupported DLPack dtype (code " + std::to_string(dt.code) + ", " +
                   std::to_string(dt.bits) + " bits); expected float32, float16, bfloat16 or bool");
    if (dl.ndim < 0 || dl.ndim > kMaxDims) throw py::value_error(name + " has more than 8 dimensions");
    t.shape.assign(dl.shape, dl.shape + dl.ndim);
    t.strides = dl.strides ? std::vector<int64_t>(dl.strides, dl.strides + dl.ndim) : contiguous_strides(t.shape);
    t.data = static_cast<const char*>(dl.data) + dl.byte_offset;
    switch (dl.device.device_type) {
        case dlpack::kCUDA:
        case dlpack::kCUDAManaged:
            t.on_device = true;
            t.device = dl.device.device_id;
            return t;
        case dlpack::kCPU:
            if (t.dtype == DType::BF16)
                type_error(name +
                           ": a bfloat16 CPU tensor cannot be passed (NumPy has no bfloat16); "
                           "move it to the GPU or convert it to float32");
            {
                py::array arr = py::array::ensure(obj);        // float32/float16/bool: via NumPy
                if (!arr) throw py::error_already_set();
                return from_numpy(arr, name);
            }
        default:
            type_error(name + ": DLPack device type " + std::to_string(dl.device.device_type) +
                       " is neither CUDA nor CPU");
    }
}

}  // namespace

TensorArg parse_tensor(py::handle obj, const std::string& name) {
    if (obj.is_none()) type_error(name + " must be an array, got None");
    if (py::isinstance<py::array>(obj)) return from_numpy(py::reinterpret_borrow<py::array>(obj), name);
    // DLPack first for CUDA producers: its stream handshake orders the producer's pending work
    // before our stream (PyTorch's __cuda_array_interface__ carries no stream).
    const bool has_dlpack = py::hasattr(obj, "__dlpack__");
    if (has_dlpack && py::hasattr(obj, "__dlpack_device__")) {
        const int type = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>().first;
        if (type == dlpack::kCUDA || type == dlpack::kCUDAManaged) return from_dlpack(obj, name, type);
    }
    if (py::hasattr(obj, "__cuda_array_interface__")) return from_cai(obj, name);
    if (has_dlpack) return from_dlpack(obj, name);
    type_error(name + " must be a NumPy array or a CUDA device array (__cuda_array_interface__ or __dlpack__), got " +
               type_name(obj));
}

std::optional<TensorArg> parse_optional(py::handle obj, const std::string& name) {
    if (obj.is_none()) return std::nullopt;
    return parse_tensor(obj, name);
}

// ---- devices ----------------------------------------------------------------------------------
std::pair<int, std::string> device_status() {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();                               // clear the error state
        return {0, cudaGetErrorString(err)};
    }
    return {n, n ? "" : "no CUDA devices"};
}

void require_device() {
    auto [n, why] = device_status();
    if (n == 0) throw std::runtime_error("no usable CUDA device: " + why);
}

CallContext::CallContext(const std::vector<const TensorArg*>& args) {
    require_device();
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    int device = -1;
    for (const TensorArg* a : args) {
        if (!a || !a->on_device || a->numel() == 0) continue;
        int dev = a->device;
        if (dev < 0) {                                    // CAI: ask where the pointer lives
            cudaPointerAttributes attr{};
            check(cudaPointerGetAttributes(&attr, a->data), (a->name + ": cudaPointerGetAttributes").c_str());
            if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
                throw py::type_error(a->name + ": __cuda_array_interface__ pointer is not device memory");
            dev = attr.device;
        }
        if (device >= 0 && dev != device)
            throw py::value_error("all device arrays must be on the same GPU; " + a->name + " is on device " +
                                  std::to_string(dev) + ", an earlier argument on device " + std::to_string(device));
        device = dev;
    }
    device_ = device >= 0 ? device : previous_;
    if (device_ != previous_) check(cudaSetDevice(device_), "cudaSetDevice");
    try {
        for (const TensorArg* a : args) {                 // CAI v3: wait for the producer's stream
            if (!a || a->stream < 0 || a->stream == 1) continue;   // 1 = the legacy default stream we use
            cudaStream_t s = a->stream == 2 ? cudaStreamPerThread : reinterpret_cast<cudaStream_t>(a->stream);
            check(cudaStreamSynchronize(s), (a->name + ": synchronising the producer stream").c_str());
        }
    } catch (...) {                                       // no destructor runs for a half-built object
        if (device_ != previous_) cudaSetDevice(previous_);
        throw;
    }
}

CallContext::~CallContext() {
    temps_.clear();
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
}

StridedLayout collapsed_layout(const TensorArg& arg) {
    // Size-1 dimensions are dropped and neighbours merged where the outer stride is the inner
    // stride times the inner size (e.g. a [B, H, T, D] view sliced only along T walks as 3-D):
    // fewer divisions per element, and views deeper than kMaxDims that collapse still fit.
    StridedLayout l;
    for (int i = 0; i < arg.ndim(); ++i) {
        if (arg.shape[i] == 1) continue;
        if (l.ndim > 0 && l.stride[l.ndim - 1] == arg.strides[i] * arg.shape[i]) {
            l.shape[l.ndim - 1] *= arg.shape[i];
            l.stride[l.ndim - 1] = arg.strides[i];
            continue;
        }
        if (l.ndim == kMaxDims)
            throw std::invalid_argument(
                arg.name + ": a strided view with more than " + std::to_string(kMaxDims) +
                " non-mergeable dimensions cannot be packed on the device; pass a contiguous array");
        l.shape[l.ndim] = arg.shape[i];
        l.stride[l.ndim] = arg.strides[i];
        ++l.ndim;
    }
    return l;                                             // ndim 0: one element (all dimensions of size 1)
}

void* CallContext::scratch(size_t bytes) {
    temps_.emplace_back(bytes);
    return temps_.back().ptr;
}

const void* CallContext::device_ptr(TensorArg& arg, bool contiguous) {
    const size_t bytes = size_t(arg.numel()) * dtype_size(arg.dtype);
    const void* data = arg.data;
    if (!arg.on_device) {                                 // NumPy: a dense block on the host, sent as it lies
        void* dst = scratch(bytes);
        if (bytes)
            check(cudaMemcpy(dst, arg.data, bytes, cudaMemcpyHostToDevice), (arg.name + ": copy to device").c_str());
        data = dst;
    }
    if (!contiguous || arg.c_contiguous()) {
        if (contiguous) arg.strides = contiguous_strides(arg.shape);
        return data;
    }
    const StridedLayout layout = collapsed_layout(arg);
    void* dst = scratch(bytes);
    strided_copy_device(data, dst, dtype_size(arg.dtype), layout, nullptr);
    arg.strides = contiguous_strides(arg.shape);
    return dst;
}

// ---- DeviceArray ------------------------------------------------------------------------------
namespace {

struct DLContext {                     // what a capsule we produce keeps alive
    py::object owner;
    std::vector<int64_t> shape;
};

void dl_deleter(dlpack::ManagedTensor* t) {
    if (!Py_IsInitialized()) return;                      // consumer released it at exit: leak, do not crash
    py::gil_scoped_acquire gil;
    delete static_cast<DLContext*>(t->manager_ctx);
    delete t;
}

void capsule_destructor(PyObject* cap) {   // never consumed: free it ourselves
    if (PyCapsule_IsValid(cap, "dltensor")) {
        auto* t = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
        if (t && t->deleter) t->deleter(t);
    }
}

const char* typestr(DType t) {
    switch (t) {
        case DType::F32: return "<f4";
        case DType::F16: return "<f2";
        case DType::Bool: return "|b1";
        default: return nullptr;
    }
}

py::tuple shape_tuple(const std::vector<int64_t>& shape) {
    py::tuple t(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t[i] = py::int_(shape[i]);
    return t;
}

py::object to_numpy(const DeviceArray& a) {
    if (a.dtype == DType::BF16)
        throw py::type_error("a bfloat16 DeviceArray has no NumPy equivalent; use torch.from_dlpack(array)");
    py::array out(py::dtype(a.dtype == DType::F32   ? "float32"
                            : a.dtype == DType::F16 ? "float16"
                                                    : "bool"),
                  std::vector<py::ssize_t>(a.shape.begin(), a.shape.end()));
    const size_t bytes = size_t(a.numel()) * dtype_size(a.dtype);
    if (bytes) {
        py::gil_scoped_release nogil;
        check(cudaMemcpy(out.mutable_data(), a.data(), bytes, cudaMemcpyDeviceToHost), "DeviceArray copy to host");
    }
    return std::move(out);
}

}  // namespace

void bind_interop(py::module_& m) {
    py::class_<DeviceArray>(m, "DeviceArray",
                            "C-contiguous device memory returned by the CUDA ops for device inputs.  Zero-copy "
                            "views: torch.from_dlpack(a), cupy.asarray(a) (__cuda_array_interface__, not for "
                            "bfloat16).  a.numpy() / np.asarray(a) copy to the host.")
        .def_property_readonly("shape", [](const DeviceArray& a) { return shape_tuple(a.shape); })
        .def_property_readonly("dtype", [](const DeviceArray& a) { return std::string(dtype_name(a.dtype)); })
        .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
        .def_property_readonly("size", &DeviceArray::numel)
        .def_property_readonly("nbytes", [](const DeviceArray& a) { return a.numel() * dtype_size(a.dtype); })
        .def_property_readonly("device", [](const DeviceArray& a) { return a.device; })
        .def_property_readonly("data_ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data()); })
        .def_property_readonly(
            "__cuda_array_interface__",
            [](const DeviceArray& a) {
                const char* ts = typestr(a.dtype);
                if (!ts) throw py::attribute_error("bfloat16 has no __cuda_array_interface__ typestr; use __dlpack__");
                py::dict d;
                d["shape"] = shape_tuple(a.shape);
                d["typestr"] = ts;
                d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(a.data()), false);
                d["strides"] = py::none();
                d["version"] = 3;
                d["stream"] = 1;                              // produced on the legacy default stream
                return d;
            })
        .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(int(dlpack::kCUDA), a.device); })
        .def(
            "__dlpack__",
            [](py::object self, py::object stream, py::object max_version, py::object dl_device, py::object copy) {
                // max_version is accepted and ignored: we hand out the legacy (unversioned) capsule,
                // which the array API lets a producer do; consumers check the capsule's name.
                (void)max_version;
                if (!dl_device.is_none()) {
                    const auto dev = dl_device.cast<std::pair<int, int>>();
                    const DeviceArray& a = self.cast<const DeviceArray&>();
                    if (dev.first != dlpack::kCUDA || dev.second != a.device)
                        throw py::buffer_error("DeviceArray.__dlpack__: can only export to its own CUDA device");
                }
                if (!copy.is_none() && copy.cast<bool>()) {   // copy=True: export a fresh copy (the spec's "must")
                    const DeviceArray& src = self.cast<const DeviceArray&>();
                    DeviceArray c;
                    c.shape = src.shape;
                    c.dtype = src.dtype;
                    c.device = src.device;
                    const size_t bytes = size_t(src.numel()) * dtype_size(src.dtype);
                    {
                        py::gil_scoped_release nogil;
                        int prev = 0;
                        check(cudaGetDevice(&prev), "cudaGetDevice");
                        check(cudaSetDevice(src.device), "cudaSetDevice");
                        cudaError_t err = cudaSuccess;
                        try {
                            c.buffer = std::make_shared<DeviceBuffer<char>>(bytes);
                            if (bytes)
                                err =
                                    cudaMemcpy(c.data(), src.data(), bytes, cudaMemcpyDeviceToDevice);  // legacy stream
                        } catch (...) {
                            cudaSetDevice(prev);
                            throw;
                        }
                        cudaSetDevice(prev);
                        check(err, "DeviceArray.__dlpack__: copy");
                    }
                    self = py::cast(std::move(c));
                }
                const DeviceArray& a = self.cast<const DeviceArray&>();
                if (!stream.is_none()) {  // consumer on another stream: finish our work first
                    const int64_t s = stream.cast<int64_t>();
                    if (s != 1 && s != -1) {
                        int prev = 0;
                        check(cudaGetDevice(&prev), "cudaGetDevice");
                        check(cudaSetDevice(a.device), "cudaSetDevice");
                        const cudaError_t err = cudaStreamSynchronize(nullptr);
                        cudaSetDevice(prev);
                        check(err, "DeviceArray.__dlpack__: synchronising the producer");
                    }
                }
                auto* ctx = new DLContext{self, a.shape};
                auto* t = new dlpack::ManagedTensor{};
                t->dl_tensor.data = a.data();
                t->dl_tensor.device = {dlpack::kCUDA, a.device};
                t->dl_tensor.ndim = int32_t(a.shape.size());
                t->dl_tensor.dtype = a.dtype == DType::F32    ? dlpack::DataType{dlpack::kFloat, 32, 1}
                                     : a.dtype == DType::F16  ? dlpack::DataType{dlpack::kFloat, 16, 1}
                                     : a.dtype == DType::BF16 ? dlpack::DataType{dlpack::kBfloat, 16, 1}
                                                              : dlpack::DataType{dlpack::kBool, 8, 1};
                t->dl_tensor.shape = ctx->shape.data();
                t->dl_tensor.strides = nullptr;
                t->dl_tensor.byte_offset = 0;
                t->manager_ctx = ctx;
                t->deleter = dl_deleter;
                PyObject* cap = PyCapsule_New(t, "dltensor", capsule_destructor);
                if (!cap) {
                    dl_deleter(t);
                    throw py::error_already_set();
                }
                return py::reinterpret_steal<py::object>(cap);
            },
            py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
            py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
        .def("numpy", &to_numpy, "Copy to a NumPy array (float32/float16).")
        .def(
            "__array__",
            [](const DeviceArray& a, py::object dtype, py::object copy) {
                if (!copy.is_none() && !copy.cast<bool>())
                    throw py::value_error("a DeviceArray can only be converted to NumPy by copying (copy=False given)");
                py::object arr = to_numpy(a);
                return dtype.is_none() ? arr : arr.attr("astype")(dtype);
            },
            py::arg("dtype") = py::none(), py::arg("copy") = py::none())
        .def("__repr__", [](const DeviceArray& a) {
            std::string s = "DeviceArray(shape=(";
            for (size_t i = 0; i < a.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(a.shape[i]);
            return s + (a.shape.size() == 1 ? ",)" : ")") + ", dtype=" + dtype_name(a.dtype) +
                   ", device=" + std::to_string(a.device) + ")";
        });

    m.def(
        "describe",
        [](py::handle obj) {
            TensorArg t = parse_tensor(obj, "x");
            py::dict d;
            d["dtype"] = dtype_name(t.dtype);
            d["shape"] = shape_tuple(t.shape);
            d["strides"] = shape_tuple(t.strides);
            d["on_device"] = t.on_device;
            d["device"] = t.device;
            d["c_contiguous"] = t.c_contiguous();
            return d;
        },
        py::arg("x"),
        "How an argument is seen by the CUDA ops (dtype, shape, element strides, host/device); reads only "
        "metadata, so it works without a GPU.");

    m.def(
        "pack_layout",
        [](py::handle obj) {
            TensorArg t = parse_tensor(obj, "x");
            const StridedLayout l = collapsed_layout(t);  // std::invalid_argument -> ValueError
            return py::make_tuple(shape_tuple(std::vector<int64_t>(l.shape, l.shape + l.ndim)),
                                  shape_tuple(std::vector<int64_t>(l.stride, l.stride + l.ndim)));
        },
        py::arg("x"),
        "(shape, element strides) the device copy walks to pack a non-contiguous argument: size-1 dimensions "
        "dropped, mergeable neighbours merged.  Metadata only; works without a GPU.");
}

}  // namespace pyworkloads::cuda
