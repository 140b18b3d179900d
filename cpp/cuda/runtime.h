// Host-side helpers shared by the CUDA op files: error checking that turns CUDA failures into
// C++ exceptions (pybind11 maps std::runtime_error to RuntimeError), never an abort.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

namespace pyworkloads::cuda {

inline void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// After every <<<...>>>: a bad configuration shows up here; faults inside the kernel surface at
// the next synchronising call (a copy back, or the caller's own synchronisation).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), (std::string(kernel) + " launch").c_str()); }

// Grid dimensions y and z are limited to 65535; refuse (rather than silently truncate) problems
// whose tile counts exceed what a kernel's grid layout can address.
inline unsigned grid_dim(int64_t tiles, int64_t limit, const char* what) {
    if (tiles > limit)
        throw std::invalid_argument(std::string(what) + " is too large for the CUDA kernel's grid (" +
                                    std::to_string(tiles) + " tiles > " + std::to_string(limit) + ")");
    return static_cast<unsigned>(tiles < 1 ? 1 : tiles);
}

// An attribute of the current device, read once per device and attribute (0 is "not read yet";
// a benign race: every thread would store the same value).
template <cudaDeviceAttr kAttr>
int device_attribute(const char* what) {
    static int cached[64] = {};
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    if (dev < 0 || dev >= 64) dev = 0;
    if (!cached[dev]) check(cudaDeviceGetAttribute(&cached[dev], kAttr, dev), what);
    return cached[dev];
}

// Shared memory one block may opt into (cudaFuncSetAttribute): the tensor-core launchers pick
// their pipeline depth, or fall back, by it.
inline int max_optin_smem() {
    return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
}
// Streaming multiprocessors: the persistent kernels launch one block per SM.
inline int sm_count() {
    return device_attribute<cudaDevAttrMultiProcessorCount>("cudaDeviceGetAttribute(MultiProcessorCount)");
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
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), n(o.n) {
        o.ptr = nullptr;
        o.n = 0;
    }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        if (this != &o) {
            reset();
            ptr = o.ptr;
            n = o.n;
            o.ptr = nullptr;
            o.n = 0;
        }
        return *this;
    }
    ~DeviceBuffer() { reset(); }
    void reset() {
        if (ptr) cudaFree(ptr);
        ptr = nullptr;
        n = 0;
    }
    void upload(const T* host) {
        if (n) check(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
    }
    void download(T* host) const {
        if (n) check(cudaMemcpy(host, ptr, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    }
};

// A call's temporary (uploaded NumPy data, packed views, a result on its way to the host):
// allocated and freed in order on the legacy default stream with the driver's memory pool
// (cudaMallocAsync / cudaFreeAsync), so a call costs no cudaMalloc and its cudaFree no
// device-wide synchronisation; the free is queued after the kernels that read the buffer.
// Only for memory used by our own work on that stream -- memory handed to Python may be read on
// other streams and stays a DeviceBuffer (synchronous cudaFree).  Falls back to cudaMalloc
// where pools are unsupported.
class StreamBuffer {
public:
    void* ptr = nullptr;
    explicit StreamBuffer(size_t bytes) {
        if (!bytes) return;
        if (pool_ready()) {
            if (cudaMallocAsync(&ptr, bytes, nullptr) == cudaSuccess) {
                async_ = true;
                return;
            }
            cudaGetLastError();                           // clear it; try the plain allocator
            ptr = nullptr;
        }
        check(cudaMalloc(&ptr, bytes), "cudaMalloc");
    }
    StreamBuffer(const StreamBuffer&) = delete;
    StreamBuffer& operator=(const StreamBuffer&) = delete;
    StreamBuffer(StreamBuffer&& o) noexcept : ptr(o.ptr), async_(o.async_) { o.ptr = nullptr; }
    StreamBuffer& operator=(StreamBuffer&&) = delete;
    ~StreamBuffer() {
        if (!ptr) return;
        if (async_) cudaFreeAsync(ptr, nullptr);
        else cudaFree(ptr);
    }

private:
    bool async_ = false;
    // Pools supported on the current device?  The first time per device, keep freed memory in
    // the pool (the default release threshold 0 would hand it back to the driver at every
    // synchronisation -- every NumPy result -- and the next call would pay for it again).
    static bool pool_ready() {
        static std::mutex mu;
        static int state[64] = {};                        // 0 unknown, 1 ready, 2 unsupported
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
            cudaGetLastError();
            return false;
        }
        std::lock_guard<std::mutex> lock(mu);
        if (state[dev] == 0) {
            int ok = 0;
            cudaMemPool_t pool;
            if (cudaDeviceGetAttribute(&ok, cudaDevAttrMemoryPoolsSupported, dev) == cudaSuccess && ok &&
                cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
                uint64_t keep = UINT64_MAX;
                cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);   // best effort
                state[dev] = 1;
            } else {
                state[dev] = 2;
            }
            cudaGetLastError();
        }
        return state[dev] == 1;
    }
};

}  // namespace pyworkloads::cuda
