// The DLPack C ABI (v0.8 "legacy" capsule layout, dmlc/dlpack include/dlpack/dlpack.h), declared
// here so the build needs no extra header.  Only what the bindings use: a producer hands us a
// PyCapsule named "dltensor" holding a DLManagedTensor*; the consumer renames it
// "used_dltensor" and calls `deleter` once done.
#pragma once
#include <cstdint>

namespace pyworkloads::dlpack {

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kBool = 6 };

struct Device {
    int32_t device_type;
    int32_t device_id;
};
struct DataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};
struct Tensor {
    void* data;
    Device device;
    int32_t ndim;
    DataType dtype;
    int64_t* shape;
    int64_t* strides;     // in elements; null = C-contiguous
    uint64_t byte_offset;
};
struct ManagedTensor {
    Tensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(ManagedTensor* self);
};

}  // namespace pyworkloads::dlpack
