// Python <-> device memory for the CUDA bindings.
//
// A tensor argument may be
//   * a NumPy array (float32, float16, bool): copied to the device for the call (a dense but
//     permuted view such as W.T is sent as it lies and packed on the device);
//   * a device array exposing __dlpack__ on a CUDA device (PyTorch, JAX, CuPy ...; preferred, and
//     the only way to pass bfloat16) or __cuda_array_interface__ (Numba, CuPy ...):
//     read in place, no copy, unless its layout is one a kernel cannot read (then it is packed
//     into a temporary on the device).
// parse_tensor() only reads Python metadata -- it never calls CUDA -- so every argument is
// validated before any device work (and this validation is testable on a machine without a GPU).
//
// Results: when any tensor argument lives on the device, the op returns a DeviceArray (device
// memory owned by Python, exposing __cuda_array_interface__ and __dlpack__, so torch.from_dlpack /
// cupy.asarray take it without a copy); otherwise a NumPy array.  Every op also takes out=, an
// existing C-contiguous device array of the result's shape and dtype to write into (no
// allocation: what a benchmark or a pre-allocated buffer wants).  Work is queued on the legacy
// default stream (PyTorch's and CuPy's default): a DeviceArray result is ordered after the
// kernels that produce it, a NumPy result is complete on return.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dlpack_abi.h"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {
namespace py = pybind11;

struct TensorArg {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape, strides;   // strides in elements
    const void* data = nullptr;            // host pointer (NumPy) or device pointer
    bool on_device = false;
    int device = -1;                       // known for DLPack; -1 = ask the driver (CAI)
    int64_t stream = -1;                   // CAI producer stream to wait for (-1: none)
    py::object keep;                       // keeps the NumPy array alive
    std::shared_ptr<dlpack::ManagedTensor> dl;   // calls the producer's deleter when released

    int ndim() const { return int(shape.size()); }
    int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
    int64_t stride(int i) const { return strides[i < 0 ? strides.size() + i : i]; }
    int64_t numel() const;
    bool c_contiguous() const;              // ignoring strides of size-1 dimensions
    std::string shape_str() const;
};

// Parse one argument (see the header comment); `name` goes into every error message.
TensorArg parse_tensor(py::handle obj, const std::string& name);
std::optional<TensorArg> parse_optional(py::handle obj, const std::string& name);

// Device memory owned by Python: what the ops return for device inputs.
struct DeviceArray {
    std::shared_ptr<DeviceBuffer<char>> buffer;
    std::vector<int64_t> shape;
    DType dtype = DType::F32;
    int device = 0;

    int64_t numel() const;
    void* data() const { return buffer ? buffer->ptr : nullptr; }
};

// Register the DeviceArray Python class (and the describe() helper used by the tests).
void bind_interop(py::module_& m);

// ---- one op call's device context -----------------------------------------------------------
// Resolves the device of the call (all device arguments must agree), makes it current for the
// call's lifetime, waits for CAI producer streams, uploads host arguments and packs unreadable
// layouts, and owns every temporary.
class CallContext {
public:
    // `args` are all tensor arguments of the call (including out=, if any).
    explicit CallContext(const std::vector<const TensorArg*>& args);
    ~CallContext();
    CallContext(const CallContext&) = delete;
    CallContext& operator=(const CallContext&) = delete;

    int device() const { return device_; }
    // A device pointer to the argument's data (host data are uploaded first).  When `contiguous`
    // is set the data are C-contiguous there and `strides` is rewritten to match; otherwise the
    // pointer keeps the argument's own strides.
    const void* device_ptr(TensorArg& arg, bool contiguous);
    void* scratch(size_t bytes);            // a temporary device buffer for this call

private:
    int device_ = 0, previous_ = -1;
    std::vector<StreamBuffer> temps_;       // freed in stream order after the call's kernels
};

// (number of usable devices, reason when none); never throws.
std::pair<int, std::string> device_status();
void require_device();

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape);
// The layout the device copy walks to pack `arg` (size-1 dimensions dropped, mergeable neighbours
// merged); throws std::invalid_argument when more than kMaxDims dimensions remain.
StridedLayout collapsed_layout(const TensorArg& arg);

}  // namespace pyworkloads::cuda
