// Host-side helpers shared by the CUDA op files: error checking that turns CUDA failures into
// C++ exceptions (pybind11 maps std::runtime_error to RuntimeError), never an abort.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyworkloads::cuda {

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// After every <<<...>>>: a bad configuration shows up here; faults inside the kernel surface at
// the next synchronising call (a copy back, or the caller's own synchronisation).
inline void check_launch(const char* kernel) {
    check(cudaGetLastError(), (std::string(kernel) + " launch").c_str());
}

// Grid dimensions y and z are limited to 65535; refuse (rather than silently truncate) problems
// whose tile counts exceed what a kernel's grid layout can address.
inline unsigned grid_dim(int64_t tiles, int64_t limit, const char* what) {
    if (tiles > limit)
        throw std::invalid_argument(std::string(what) + " is too large for the CUDA kernel's grid (" +
                                    std::to_string(tiles) + " tiles > " + std::to_string(limit) + ")");
    return static_cast<unsigned>(tiles < 1 ? 1 : tiles);
}

// Owning device buffer (RAII), so an exception between cudaMalloc and cudaFree cannot leak.
template <class T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t count) : n(count) {
        if (count) check(cudaMalloc(&ptr, count * sizeof(T)), "cudaMalloc");
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), n(o.n) { o.ptr = nullptr; o.n = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) { reset(); ptr = o.ptr; n = o.n; o.ptr = nullptr; o.n = 0; }
        return *this;
    }
    ~DeviceBuffer() { reset(); }
    void reset() { if (ptr) cudaFree(ptr); ptr = nullptr; n = 0; }
    void upload(const T* host) { if (n) check(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D"); }
    void download(T* host) const { if (n) check(cudaMemcpy(host, ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H"); }
};

}  // namespace pyworkloads::cuda
