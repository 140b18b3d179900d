// Host-side helpers shared by the CUDA op files: error checking that turns CUDA failures into
// C++ exceptions (pybind11 maps std::runtime_error to RuntimeError), never an abort.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pyworkloads::cuda {

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Owning device buffer (RAII), so an exception between cudaMalloc and cudaFree cannot leak.
template <class T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t n = 0;
    explicit DeviceBuffer(size_t count) : n(count) {
        if (count) check(cudaMalloc(&ptr, count * sizeof(T)), "cudaMalloc");
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
    void upload(const T* host) { if (n) check(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D"); }
    void download(T* host) const { if (n) check(cudaMemcpy(host, ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H"); }
};

}  // namespace pyworkloads::cuda
