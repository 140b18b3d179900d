// pyworkloads._cuda: the CUDA backend's bindings.
//
// Each op parses its tensor arguments (NumPy or device arrays, see interop.h), checks dtypes,
// shapes and options -- all on the host, before any CUDA call, raising TypeError / ValueError
// that name the argument -- then resolves the device, moves host data there, launches, and
// returns NumPy for NumPy inputs or a DeviceArray (or the given out=) for device inputs.
// Semantics follow pyworkloads/kernels/reference.py.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>

#include "interop.h"
#include "ops_cuda.h"
#include "runtime.h"

namespace py = pybind11;
using namespace pyworkloads::cuda;

namespace {

void require_float(const TensorArg& t, const char* op) {
    if (t.dtype == DType::Bool)
        throw py::type_error(std::string(op) + ": " + t.name + " must be float32, float16 or bfloat16, got bool");
}

void require_same_dtype(const TensorArg& t, const TensorArg& ref, const char* op) {
    if (t.dtype != ref.dtype)
        throw py::type_error(std::string(op) + ": " + t.name + " must have the dtype of " + ref.name + " (" +
                             dtype_name(ref.dtype) + "), got " + dtype_name(t.dtype));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class Enum>
Enum parse_algo(const std::string& s, std::initializer_list<std::pair<const char*, Enum>> names, const char* op) {
    std::string all;
    for (const auto& [name, value] : names) {
        if (s == name) return value;
        all += all.empty() ? std::string("'") + name + "'" : std::string(", '") + name + "'";
    }
    throw py::value_error(std::string(op) + ": algo must be one of " + all + ", got '" + s + "'");
}

// out=: an existing C-contiguous device array of the result's dtype and shape.
void check_out(const std::optional<TensorArg>& out, DType dtype, const std::vector<int64_t>& shape, const char* op) {
    if (!out) return;
    if (!out->on_device) throw py::type_error(std::string(op) + ": out must be a CUDA device array");
    if (out->dtype != dtype)
        throw py::type_error(std::string(op) + ": out must have dtype " + dtype_name(dtype) + ", got " +
                             dtype_name(out->dtype));
    if (out->shape != shape) {
        TensorArg want;
        want.shape = shape;
        throw py::value_error(std::string(op) + ": out must have shape " + want.shape_str() + ", got " +
                              out->shape_str());
    }
    if (!out->c_contiguous()) throw py::value_error(std::string(op) + ": out must be C-contiguous");
}

// Where the result goes: out=, a new DeviceArray (any device input), or a NumPy array filled from
// a device temporary.
struct Result {
    py::object out_obj;                  // out= as given
    std::optional<DeviceArray> device;   // a new device result
    // a new host result.  std::optional, not a bare py::array: a default-constructed py::array is
    // an empty (0,) float64 array, not a null handle, so it cannot mark "no host result".
    std::optional<py::array> host;
    void* ptr = nullptr;                 // where the kernel writes
    size_t bytes = 0;

    Result(py::handle out, bool on_device, DType dtype, const std::vector<int64_t>& shape) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        bytes = size_t(n) * dtype_size(dtype);
        if (!out.is_none()) {
            out_obj = py::reinterpret_borrow<py::object>(out);
        } else if (!on_device) {
            if (dtype == DType::BF16)
                throw py::type_error("bfloat16 results need device inputs (NumPy has no bfloat16)");
            host.emplace(py::dtype(dtype == DType::F32 ? "float32" : "float16"),
                         std::vector<py::ssize_t>(shape.begin(), shape.end()));
        }
    }
    // With the call's device current (inside the CallContext).
    void allocate(CallContext& ctx, const std::optional<TensorArg>& out, DType dtype,
                  const std::vector<int64_t>& shape) {
        if (out) {
            ptr = const_cast<void*>(out->data);
        } else if (host) {
            ptr = ctx.scratch(bytes);
        } else {
            DeviceArray a;
            a.buffer = std::make_shared<DeviceBuffer<char>>(bytes);
            a.shape = shape;
            a.dtype = dtype;
            a.device = ctx.device();
            ptr = a.data();
            device = std::move(a);
        }
    }
    void finish() {                      // without the GIL
        if (host && bytes)
            check(cudaMemcpy(host->mutable_data(), ptr, bytes, cudaMemcpyDeviceToHost), "copy result to host");
    }
    py::object object() {
        if (out_obj) return out_obj;
        if (device) return py::cast(std::move(*device));
        return std::move(*host);
    }
};

// ---- matmul -------------------------------------------------------------------------------------
struct MatrixOperand {
    const void* ptr = nullptr;
    int64_t ld = 0;
};

// A [..., R, C] operand readable by the kernels: unit stride along C, non-negative strides;
// anything else is packed into a contiguous temporary first.
MatrixOperand matrix_operand(CallContext& ctx, TensorArg& t) {
    bool readable = t.dim(-1) <= 1 || t.stride(-1) == 1;
    for (int64_t s : t.strides) readable = readable && s >= 0;
    MatrixOperand m;
    m.ptr = ctx.device_ptr(t, !readable);
    m.ld = t.dim(-2) <= 1 ? t.dim(-1) : t.stride(-2);
    return m;
}

py::object matmul(py::handle a_obj, py::handle b_obj, const std::string& algo_name, py::handle out_obj) {
    const MatmulAlgo requested = parse_algo<MatmulAlgo>(algo_name,
                                                        {{"auto", MatmulAlgo::Auto},
                                                         {"naive", MatmulAlgo::Naive},
                                                         {"tiled", MatmulAlgo::Tiled},
                                                         {"mma", MatmulAlgo::Mma},
                                                         {"wgmma", MatmulAlgo::Wgmma},
                                                         {"wgmma_direct", MatmulAlgo::WgmmaDirect},
                                                         {"wgmma_tma", MatmulAlgo::WgmmaTma}},
                                                        "matmul");
    TensorArg a = parse_tensor(a_obj, "a"), b = parse_tensor(b_obj, "b");
    require_float(a, "matmul");
    require_float(b, "matmul");
    require_same_dtype(b, a, "matmul");
    if (a.ndim() < 2 || b.ndim() < 2)
        throw py::value_error("matmul needs a and b with at least 2 dimensions, got a" + a.shape_str() + " b" +
                              b.shape_str());
    const int64_t M = a.dim(-2), K = a.dim(-1), N = b.dim(-1);
    if (b.dim(-2) != K)
        throw py::value_error("matmul: a's last dimension (" + std::to_string(K) + ") must equal b's second-to-last (" +
                              std::to_string(b.dim(-2)) + "); got a" + a.shape_str() + " b" + b.shape_str());
    const int nb = std::max(a.ndim(), b.ndim()) - 2;
    if (nb > kMaxBatchDims) throw py::value_error("matmul: at most 6 batch dimensions are supported");
    std::vector<int64_t> out_shape;
    for (int i = 0; i < nb; ++i) {
        const int ia = i - (nb - (a.ndim() - 2)), ib = i - (nb - (b.ndim() - 2));
        const int64_t da = ia >= 0 ? a.shape[ia] : 1, db = ib >= 0 ? b.shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            throw py::value_error("matmul: batch dimensions of a" + a.shape_str() + " and b" + b.shape_str() +
                                  " do not broadcast");
        out_shape.push_back(da == 1 ? db : da);
    }
    MatmulProblem p;
    p.dtype = a.dtype;
    p.M = M;
    p.N = N;
    p.K = K;
    p.batch_ndim = nb;
    p.batch = 1;
    for (int i = 0; i < nb; ++i) {
        p.batch_shape[i] = out_shape[i];
        p.batch *= out_shape[i];
    }
    MatmulAlgo algo;
    try {
        algo = matmul_resolve(p, requested);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    out_shape.push_back(M);
    out_shape.push_back(N);
    std::optional<TensorArg> out = parse_optional(out_obj, "out");
    check_out(out, a.dtype, out_shape, "matmul");
    Result result(out_obj, a.on_device || b.on_device, a.dtype, out_shape);

    {
        py::gil_scoped_release nogil;
        CallContext ctx({&a, &b, out ? &*out : nullptr});
        if (is_wgmma(requested) && !wgmma_available())
            throw py::value_error(
                std::string("matmul: algo='") + matmul_algo_name(requested) +
                "' needs a Hopper GPU (compute capability 9.0), a build with sm_90a code "
                "(CMAKE_CUDA_ARCHITECTURES containing 90a) and PYWORKLOADS_NO_WGMMA unset; use 'mma'");
        const MatrixOperand ma = matrix_operand(ctx, a), mb = matrix_operand(ctx, b);
        p.a = ma.ptr;
        p.lda = ma.ld;
        p.b = mb.ptr;
        p.ldb = mb.ld;
        const int es = dtype_size(p.dtype);
        p.a_vec = aligned16(p.a) && (p.lda * es) % 16 == 0;
        p.b_vec = aligned16(p.b) && (p.ldb * es) % 16 == 0;
        for (int i = 0; i < nb; ++i) {
            const int ia = i - (nb - (a.ndim() - 2)), ib = i - (nb - (b.ndim() - 2));
            p.batch_stride_a[i] = (ia >= 0 && a.shape[ia] != 1) ? a.strides[ia] : 0;
            p.batch_stride_b[i] = (ib >= 0 && b.shape[ib] != 1) ? b.strides[ib] : 0;
            p.a_vec = p.a_vec && (p.batch_stride_a[i] * es) % 16 == 0;
            p.b_vec = p.b_vec && (p.batch_stride_b[i] * es) % 16 == 0;
        }
        result.allocate(ctx, out, a.dtype, out_shape);
        p.c = result.ptr;
        matmul_device(p, algo, nullptr);
        result.finish();
    }
    return result.object();
}

// ---- to_device ----------------------------------------------------------------------------------
// A C-contiguous DeviceArray copy of any array the ops take (NumPy: uploaded; device arrays: copied
// on the device, strided layouts packed), so NumPy users can keep operands on the GPU between calls
// and a call with only DeviceArray arguments imports them without any Python-level protocol.
py::object to_device(py::handle obj) {
    TensorArg a = parse_tensor(obj, "a");
    Result result(py::none(), true, a.dtype, a.shape);
    {
        py::gil_scoped_release nogil;
        CallContext ctx({&a});
        const void* src = ctx.device_ptr(a, true);
        result.allocate(ctx, std::nullopt, a.dtype, a.shape);
        if (result.bytes)   // the legacy stream, like the kernels: ordered before the temporaries are freed
            check(cudaMemcpyAsync(result.ptr, src, result.bytes, cudaMemcpyDeviceToDevice, nullptr), "to_device: copy");
    }
    return result.object();
}

// ---- attention ----------------------------------------------------------------------------------
// Strides of a bias/mask broadcast to [B, Hq, Tq, Tk] (0 along broadcast dimensions).
void broadcast_strides(const TensorArg& t, const int64_t (&full)[4], int64_t (&strides)[4]) {
    auto shape_error = [&]() {
        return py::value_error("attention: " + t.name + " shape " + t.shape_str() +
                               " does not broadcast to [B, Hq, Tq, Tk] = (" + std::to_string(full[0]) + ", " +
                               std::to_string(full[1]) + ", " + std::to_string(full[2]) + ", " +
                               std::to_string(full[3]) + ")");
    };
    if (t.ndim() > 4)
        throw py::value_error("attention: " + t.name + " must have at most 4 dimensions, got " +
                              std::to_string(t.ndim()));
    for (int i = 0; i < 4; ++i) {
        const int j = i - (4 - t.ndim());
        const int64_t d = j >= 0 ? t.shape[j] : 1;
        if (d != full[i] && d != 1) throw shape_error();
        strides[i] = (j >= 0 && d != 1) ? t.strides[j] : 0;
    }
}

AttnOperand attn_operand(CallContext& ctx, TensorArg& t) {
    bool readable = t.dim(3) <= 1 || t.stride(3) == 1;
    for (int64_t s : t.strides) readable = readable && s >= 0;
    AttnOperand o;
    o.ptr = ctx.device_ptr(t, !readable);
    o.sb = t.dim(0) == 1 ? 0 : t.stride(0);
    o.sh = t.dim(1) == 1 ? 0 : t.stride(1);
    o.st = t.dim(2) == 1 ? 0 : t.stride(2);
    return o;
}

py::object attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal, py::object scale_obj,
                     py::object bias_obj, py::handle mask_obj, const std::string& algo_name, py::handle out_obj) {
    const AttnAlgo requested = parse_algo<AttnAlgo>(
        algo_name,
        {{"auto", AttnAlgo::Auto}, {"simt", AttnAlgo::Simt}, {"mma", AttnAlgo::Mma}, {"mma_async", AttnAlgo::MmaAsync}},
        "attention");
    TensorArg q = parse_tensor(q_obj, "q"), k = parse_tensor(k_obj, "k"), v = parse_tensor(v_obj, "v");
    for (const TensorArg* t : {&q, &k, &v}) {
        require_float(*t, "attention");
        if (t->ndim() != 4)
            throw py::value_error("attention: " + t->name + " must be 4-D [B, H, T, Dh], got shape " + t->shape_str());
    }
    require_same_dtype(k, q, "attention");
    require_same_dtype(v, q, "attention");
    const int64_t B = q.dim(0), Hq = q.dim(1), Tq = q.dim(2), Dh = q.dim(3);
    if (k.dim(0) != B || v.dim(0) != B)
        throw py::value_error("attention: batch sizes differ: q " + std::to_string(B) + ", k " +
                              std::to_string(k.dim(0)) + ", v " + std::to_string(v.dim(0)));
    if (k.dim(1) != v.dim(1) || k.dim(2) != v.dim(2))
        throw py::value_error("attention: k" + k.shape_str() + " and v" + v.shape_str() +
                              " must share heads and length");
    const int64_t Hkv = k.dim(1), Tk = k.dim(2), Dv = v.dim(3);
    if (Hkv == 0 || Hq % Hkv != 0)
        throw py::value_error("attention: query heads (" + std::to_string(Hq) +
                              ") must be a multiple of key/value heads (" + std::to_string(Hkv) + ")");
    if (k.dim(3) != Dh)
        throw py::value_error("attention: q and k head widths differ (" + std::to_string(Dh) + " vs " +
                              std::to_string(k.dim(3)) + ")");
    if (causal && Tq > Tk)
        throw py::value_error("attention: causal needs Tq <= Tk (bottom-right alignment), got Tq=" +
                              std::to_string(Tq) + ", Tk=" + std::to_string(Tk));
    if (Dh == 0)    // the default scale 1/sqrt(Dh) would be inf, and every score 0 * inf = NaN
        throw py::value_error("attention: q and k need a head width Dh >= 1, got 0");
    float scale;
    if (scale_obj.is_none()) {
        scale = float(1.0 / std::sqrt(double(Dh)));
    } else {
        const double s = scale_obj.cast<double>();
        if (!std::isfinite(s) || std::fabs(s) > 3.4028234663852886e38)   // the kernels scale in float32
            throw py::value_error("attention: scale must be a finite float32 number (|scale| <= 3.4028235e38), got " +
                                  std::string(py::repr(scale_obj)));
        scale = float(s);
    }
    // A NumPy bias in another float dtype than q is converted (the reference promotes instead;
    // rounding the bias to q's dtype is what a kernel in that dtype does).
    if (py::isinstance<py::array>(bias_obj) && !q.on_device && q.dtype != DType::BF16) {
        const char* want = q.dtype == DType::F32 ? "float32" : "float16";
        py::array arr = bias_obj.cast<py::array>();
        if (arr.dtype().kind() == 'f' && !arr.dtype().is(py::dtype(want))) bias_obj = arr.attr("astype")(want);
    }
    std::optional<TensorArg> bias = parse_optional(bias_obj, "bias"), mask = parse_optional(mask_obj, "mask");
    AttnProblem p;
    p.dtype = q.dtype;
    p.B = B;
    p.Hq = Hq;
    p.Hkv = Hkv;
    p.Tq = Tq;
    p.Tk = Tk;
    p.Dh = Dh;
    p.Dv = Dv;
    p.scale = scale;
    p.causal = causal;
    const int64_t full[4] = {B, Hq, Tq, Tk};
    if (bias) {
        require_float(*bias, "attention");
        require_same_dtype(*bias, q, "attention");
        broadcast_strides(*bias, full, p.bias_stride);
    }
    if (mask) {
        if (mask->dtype != DType::Bool)
            throw py::type_error(std::string("attention: mask must be a boolean array (True = attend), got dtype ") +
                                 dtype_name(mask->dtype));
        broadcast_strides(*mask, full, p.mask_stride);
    }
    AttnAlgo algo;
    try {
        algo = attention_resolve(p, requested);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    const std::vector<int64_t> out_shape = {B, Hq, Tq, Dv};
    std::optional<TensorArg> out = parse_optional(out_obj, "out");
    check_out(out, q.dtype, out_shape, "attention");
    bool any_device =
        q.on_device || k.on_device || v.on_device || (bias && bias->on_device) || (mask && mask->on_device);
    Result result(out_obj, any_device, q.dtype, out_shape);

    {
        py::gil_scoped_release nogil;
        CallContext ctx({&q, &k, &v, bias ? &*bias : nullptr, mask ? &*mask : nullptr, out ? &*out : nullptr});
        p.q = attn_operand(ctx, q);
        p.k = attn_operand(ctx, k);
        p.v = attn_operand(ctx, v);
        if (bias) {
            p.bias = ctx.device_ptr(*bias, false);
            broadcast_strides(*bias, full, p.bias_stride);   // host biases were re-laid out on upload
        }
        if (mask) {
            p.mask = static_cast<const uint8_t*>(ctx.device_ptr(*mask, false));
            broadcast_strides(*mask, full, p.mask_stride);
        }
        const int64_t es = dtype_size(p.dtype);
        p.vec = Dh % 8 == 0 && Dv % 8 == 0;
        for (const AttnOperand* o : {&p.q, &p.k, &p.v})
            p.vec = p.vec && aligned16(o->ptr) && (o->sb * es) % 16 == 0 && (o->sh * es) % 16 == 0 &&
                    (o->st * es) % 16 == 0;
        result.allocate(ctx, out, q.dtype, out_shape);
        p.out = result.ptr;
        attention_device(p, algo, nullptr);
        result.finish();
    }
    return result.object();
}

// ---- norms --------------------------------------------------------------------------------------
py::object norm(const char* op, bool rms, py::handle x_obj, py::handle w_obj, py::handle b_obj, double eps,
                const std::string& algo_name, py::handle out_obj) {
    const NormAlgo algo = parse_algo<NormAlgo>(
        algo_name,
        {{"auto", NormAlgo::Auto}, {"block", NormAlgo::Block}, {"warp", NormAlgo::Warp}, {"rows", NormAlgo::Rows}}, op);
    TensorArg x = parse_tensor(x_obj, "x");
    require_float(x, op);
    if (x.ndim() < 1) throw py::value_error(std::string(op) + ": x must have at least 1 dimension");
    const int64_t D = x.dim(-1);
    std::optional<TensorArg> w = parse_optional(w_obj, "weight"), b = parse_optional(b_obj, "bias");
    if (rms && !w) throw py::value_error("rms_norm: weight is required");
    for (const std::optional<TensorArg>* t : {&w, &b}) {
        if (!*t) continue;
        require_float(**t, op);
        require_same_dtype(**t, x, op);
        if ((*t)->ndim() != 1 || (*t)->dim(0) != D)
            throw py::value_error(std::string(op) + ": " + (*t)->name + " must have shape (" + std::to_string(D) +
                                  ",) to match x's last axis, got " + (*t)->shape_str());
    }
    if (!std::isfinite(eps) || eps < 0) throw py::value_error(std::string(op) + ": eps must be a finite number >= 0");
    const std::vector<int64_t> out_shape = x.shape;
    std::optional<TensorArg> out = parse_optional(out_obj, "out");
    check_out(out, x.dtype, out_shape, op);
    const bool any_device = x.on_device || (w && w->on_device) || (b && b->on_device);
    Result result(out_obj, any_device, x.dtype, out_shape);

    {
        py::gil_scoped_release nogil;
        CallContext ctx({&x, w ? &*w : nullptr, b ? &*b : nullptr, out ? &*out : nullptr});
        NormProblem p;
        p.dtype = x.dtype;
        p.rms = rms;
        p.D = D;
        p.rows = D ? x.numel() / D : 0;
        p.eps = float(eps);
        p.x = ctx.device_ptr(x, true);
        if (w) p.w = ctx.device_ptr(*w, true);
        if (b) p.b = ctx.device_ptr(*b, true);
        result.allocate(ctx, out, x.dtype, out_shape);
        p.y = result.ptr;
        norm_device(p, algo, nullptr);
        result.finish();
    }
    return result.object();
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() =
        "pyworkloads CUDA kernels: NumPy in -> NumPy out (copied through the GPU); device arrays "
        "(__cuda_array_interface__ / DLPack) in -> DeviceArray out, or written into out=.";
    bind_interop(m);
    py::dict algorithms;                  // every kernel version stays callable (tests, teaching, benchmarks)
    algorithms["matmul"] = py::make_tuple("auto", "naive", "tiled", "mma", "wgmma", "wgmma_direct", "wgmma_tma");
    algorithms["attention"] = py::make_tuple("auto", "simt", "mma", "mma_async");
    algorithms["rms_norm"] = py::make_tuple("auto", "block", "warp", "rows");
    algorithms["layer_norm"] = py::make_tuple("auto", "block", "warp", "rows");
    m.attr("ALGORITHMS") = algorithms;
    m.def("device_status", &device_status, "(device count, reason if none); never raises");
    m.def("runtime_version", []() {
        int v = 0;
        cudaRuntimeGetVersion(&v);
        return v;
    });
    m.def(
        "driver_version",
        []() {
            int v = 0;
            if (cudaDriverGetVersion(&v) != cudaSuccess) {
                cudaGetLastError();
                return 0;
            }
            return v;
        },
        "The installed driver's CUDA version (0 without a driver); never raises.");
    m.def(
        "synchronize",
        []() {
            py::gil_scoped_release nogil;
            require_device();
            check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
        },
        "Wait for all queued work on the current device (surfaces asynchronous kernel errors).");

    m.def("to_device", &to_device, py::arg("a"),
          "A C-contiguous DeviceArray copy of a (NumPy array or CUDA device array; float32, float16, bfloat16 or "
          "bool): operands kept on the GPU between calls, whose results are then DeviceArrays too.");
    m.def(
        "matmul_last_kernel", []() { return std::string(matmul_last_kernel()); },
        "The algorithm whose kernel this thread's last matmul call launched, after 'auto' and the fallbacks "
        "(e.g. 'wgmma' -> 'mma' without sm_90a code, 'wgmma_tma' -> 'wgmma_direct' for a batch that does not "
        "fold into one matrix); '' before any call or when the last launched nothing.");
    m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::kw_only(), py::arg("algo") = "auto",
          py::arg("out") = py::none(),
          "a @ b with np.matmul semantics (batch dimensions broadcast), float32/float16/bfloat16, FP32 "
          "accumulation.  algo: 'auto' | 'naive' | 'tiled' (shared-memory tiles) | 'mma' (tensor cores: mma.sync + "
          "ldmatrix + cp.async ring) | 'wgmma' (Hopper warpgroup MMA, sm_90a, B transposed first) | 'wgmma_direct' "
          "(that, reading B as it lies) | 'wgmma_tma' (that, fed by TMA + mbarriers); the last four float16/bfloat16 "
          "only.  'auto' is 'tiled' for float32 and 'wgmma_tma' for float16/bfloat16, which runs 'wgmma_direct' for "
          "batches that do not fold into one matrix, 'wgmma' for B rows that are not 16-byte aligned and 'mma' off "
          "Hopper; matmul_last_kernel() names the kernel that ran.");
    m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = false,
          py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("mask") = py::none(), py::kw_only(),
          py::arg("algo") = "auto", py::arg("out") = py::none(),
          "Flash-attention forward (see reference.attention for the semantics).  algo: 'auto' | 'simt' | "
          "'mma' | 'mma_async' (float16/bfloat16, head width <= 128).");
    m.def(
        "rms_norm",
        [](py::handle x, py::handle w, double eps, const std::string& algo, py::handle out) {
            return norm("rms_norm", true, x, w, py::none(), eps, algo, out);
        },
        py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6, py::kw_only(), py::arg("algo") = "auto",
        py::arg("out") = py::none(), "RMSNorm over the last axis.  algo: 'auto' | 'block' | 'warp' | 'rows'.");
    m.def(
        "layer_norm",
        [](py::handle x, py::handle w, py::handle b, double eps, const std::string& algo, py::handle out) {
            return norm("layer_norm", false, x, w, b, eps, algo, out);
        },
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps") = 1e-5, py::kw_only(),
        py::arg("algo") = "auto", py::arg("out") = py::none(),
        "LayerNorm over the last axis (biased variance); weight/bias may be None.  algo: 'auto' | 'block' | 'warp' | "
        "'rows'.");
}
